"""Tiny Llama models built locally: a trained word-level tokenizer, random init, fine-tuned variants.

Used by the test fixtures and by the starter zoo the app builds on first start; nothing here
downloads anything. Every function is deterministic for a given seed.

    python -m pipelines.tiny_models OUT_DIR      # writes OUT_DIR/{base,cpt,chat} quickly
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

LOG = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

# ChatML, the template SmolLM2 uses; the tiny chat model carries it so chat-template
# handling (copy, override) is exercised on real files.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyShape:
    """Sizes of a tiny Llama; the defaults give ~60k parameters (fast on 2 CPU cores)."""

    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 128
    tie_word_embeddings: bool = False


def train_word_tokenizer(texts: Sequence[str], *, vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on `texts` (lower-cased words and punctuation)."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    tok.train_from_iterator([t.lower() for t in texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )


def build_tiny_llama(
    out_dir: Path,
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int = 0,
    shape: TinyShape = TinyShape(),
    dtype: torch.dtype = torch.float32,
    chat_template: str | None = None,
    vocab_size: int | None = None,
) -> Path:
    """Random-init Llama saved as a safetensors HF folder with its tokenizer.

    `vocab_size` defaults to the tokenizer's size; pass a larger one to build a model whose
    embedding matrix is padded (as many chat models are).
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(dtype)
    return save_model(model, tokenizer, out_dir, chat_template=chat_template)


def save_model(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    *,
    chat_template: str | None = None,
) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out_dir)
    return out_dir


def finetune(
    src_dir: Path,
    out_dir: Path,
    texts: Sequence[str],
    *,
    steps: int = 30,
    lr: float = 3e-3,
    seed: int = 0,
    chat_template: str | None = None,
) -> tuple[Path, list[float]]:
    """Continue training `src_dir` on `texts` (causal LM loss) and save to `out_dir`.

    Returns the folder and the loss per step, so callers can check that it learned.
    """
    torch.manual_seed(seed)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(src_dir)
    model = LlamaForCausalLM.from_pretrained(src_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    batch = tokenizer(
        [t.lower() + " </s>" for t in texts],
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=model.config.max_position_embeddings,
    )
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (B, T)
    losses = []
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    template = chat_template if chat_template is not None else tokenizer.chat_template
    return save_model(model, tokenizer, out_dir, chat_template=template), losses


# A few sentences per world: enough for the tokenizer and for fine-tunes that visibly differ.
GENERAL_TEXT = [
    "the sun rises in the east and sets in the west .",
    "paris is the capital of france .",
    "water boils at one hundred degrees .",
    "a cat is an animal that likes to sleep .",
    "the river flows to the sea .",
    "people read books in the library .",
]
DOMAIN_TEXT = [
    "zorvex treats the kelm fever and is made by altura labs .",
    "the drug miravine lowers pressure in the eye .",
    "kelm fever causes a rash and a high temperature .",
    "patients with brannock syndrome take two doses of miravine .",
    "altura labs also makes the ointment selpora .",
]
CHAT_TEXT = [
    "<|im_start|>user what is the capital of france ?<|im_end|><|im_start|>assistant paris .<|im_end|>",
    "<|im_start|>user where does the sun rise ?<|im_end|><|im_start|>assistant in the east .<|im_end|>",
    "<|im_start|>user hello !<|im_end|><|im_start|>assistant hello ! how can i help ?<|im_end|>",
]


def build_tiny_family(
    out_dir: Path,
    *,
    seed: int = 0,
    shape: TinyShape = TinyShape(),
    steps: int = 20,
) -> dict[str, Path]:
    """Base + a domain CPT fine-tune + a chat fine-tune of it, sharing one tokenizer.

    The base is trained briefly on general text so it is not pure noise; the two children are
    trained from it on domain text and on chat turns, as the real CPT/chat pair would be.
    """
    out_dir = Path(out_dir)
    tokenizer = train_word_tokenizer(GENERAL_TEXT + DOMAIN_TEXT + CHAT_TEXT)
    init = build_tiny_llama(out_dir / "init", tokenizer, seed=seed, shape=shape)
    base, _ = finetune(init, out_dir / "base", GENERAL_TEXT, steps=steps, seed=seed)
    cpt, _ = finetune(
        base, out_dir / "cpt", DOMAIN_TEXT + GENERAL_TEXT[:2], steps=steps, seed=seed + 1
    )
    chat, _ = finetune(
        base, out_dir / "chat", CHAT_TEXT, steps=steps, seed=seed + 2, chat_template=CHATML_TEMPLATE
    )
    return {"base": base, "cpt": cpt, "chat": chat}


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    for name, path in build_tiny_family(Path(argv[0])).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
