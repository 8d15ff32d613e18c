"""Instruction tuning (SFT): chat turns in the model's chat template, loss on assistant tokens only.

    python -m pipelines.sft pipelines/configs/tiny_sft.yml
    accelerate launch --config_file pipelines/launch/deepspeed_zero3.yaml \\
        -m pipelines.sft pipelines/configs/llama2_7b_sft.yml

Data: JSONL, one conversation per line: {"messages": [{"role": "user", "content": ...},
{"role": "assistant", "content": ...}, ...]}. Each conversation is rendered with the model's
chat template (or `data.chat_template`: a name such as "chatml"/"llama2", or jinja; see
studio.inference.chat_format), tokenized without extra special tokens, and labelled: the
tokens of each assistant reply, its turn-end marker included (so the model learns to stop),
keep their id; every other token (system, user, template markup, padding) is -100.

How the assistant spans are found: the conversation up to turn i rendered with the generation
prompt ends where reply i starts; rendered through turn i it ends where the reply's markup
ends. Those character offsets select tokens through the fast tokenizer's offset mapping.
That needs a template whose rendering of a prefix is a prefix of the whole (ChatML, Llama-2,
Llama-3, Mistral are); one that is not is refused with a sentence.

Without packing, each conversation is one example (truncated to seq_len; counted in the logs)
and a micro-batch is right-padded. With `packing: true` conversations are concatenated and cut
into seq_len blocks (labels travel with their tokens; the last, short block is kept).
The training loop, checkpoints, logs and stop/resume are the CPT recipe's (pipelines.cpt).
Tests: tests/test_sft.py.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.cpt import Batch, CPTRecipe, TrainData, main
from pipelines.data import MixtureStream, read_jsonl
from studio.errors import StudioError
from studio.inference.chat_format import ChatMessage, render_chat
from studio.training.config import SFTConfig, SFTData, TrainConfigError
from studio.training.runlog import DataRecord, SourceStats

LOG = logging.getLogger(__name__)

SOURCE = "sft"
IGNORE = -100


def read_conversations(paths: Sequence[str | Path], *, field: str = "messages") -> list[list[dict]]:
    """The conversations of messages-JSONL files, each a list of {role, content}."""
    out = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise TrainConfigError(f"chat data file {path} does not exist; check data.paths")
        for number, obj in read_jsonl(path):
            turns = obj.get(field)
            if not isinstance(turns, list) or not turns:
                raise TrainConfigError(
                    f"{path} line {number} has no '{field}' list of turns; each line must look "
                    'like {"messages": [{"role": "user", "content": "..."}, ...]}'
                )
            try:
                out.append([ChatMessage.model_validate(t).model_dump() for t in turns])
            except ValueError as error:
                raise TrainConfigError(
                    f"{path} line {number}: each turn needs a role (system, user or assistant) "
                    f"and a text content ({error.__class__.__name__})"
                ) from error
    return out


def tokenize_conversation(
    tokenizer: Any, messages: list[dict], *, template: str | None = None
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one rendered conversation; labels are -100 but on assistant tokens."""
    try:
        full = render_chat(tokenizer, messages, template=template, add_generation_prompt=False)
        spans = []
        for i, turn in enumerate(messages):
            if turn["role"] != "assistant":
                continue
            if i == 0:
                raise TrainConfigError(
                    "a conversation starts with an assistant turn; put a user (or system) turn "
                    "before it"
                )
            start = render_chat(tokenizer, messages[:i], template=template)
            through = render_chat(
                tokenizer, messages[: i + 1], template=template, add_generation_prompt=False
            )
            if not (through.startswith(start) and full.startswith(through)):
                raise TrainConfigError(
                    "this chat template renders a conversation's start differently from the "
                    "whole, so assistant tokens cannot be located; choose another data.chat_template"
                )
            spans.append((len(start), len(through)))
    except TrainConfigError:
        raise
    except StudioError as error:  # no template / template error: say it in training terms
        raise TrainConfigError(f"{error} (set data.chat_template)") from error
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [
        token if any(lo <= begin < hi for lo, hi in spans) else IGNORE
        for token, (begin, _end) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return ids, labels


class SFTRecipe(CPTRecipe):
    """The CPT recipe with chat data: assistant-only labels, optional packing."""

    kind = "sft"

    def build_data(self, tokenizer: Any, *, position: dict[str, int] | None) -> TrainData:
        config = self.config
        assert isinstance(config, SFTConfig)
        data = config.data
        train, truncated = _examples(tokenizer, data.paths, data)
        if not train:
            raise TrainConfigError("the chat data holds no conversation; check data.paths")
        evals = {}
        if data.eval_paths:
            held_out, _ = _examples(tokenizer, data.eval_paths, data)
            evals["chat"] = [_pad_batch([ex], tokenizer.pad_token_id) for ex in held_out][
                : data.eval_blocks
            ]
        stream = MixtureStream(
            {SOURCE: len(train)}, {SOURCE: 1.0}, seed=config.seed, position=position
        )
        pad = tokenizer.pad_token_id
        tokens = sum(len(ids) for ids, _ in train)
        record = DataRecord(
            seq_len=data.seq_len,
            sources=[
                SourceStats(
                    name=SOURCE,
                    documents=len(train),
                    tokens=tokens,
                    blocks=len(train),
                    dropped_tokens=truncated,
                    target_share=1.0,
                )
            ],
            eval_blocks={name: len(b) for name, b in evals.items()},
        )

        def collate(picks: list[tuple[str, int]]) -> Batch:
            return _pad_batch([train[index] for _name, index in picks], pad)

        return TrainData(stream, collate, evals, record, tokens_of=lambda _n, i: len(train[i][0]))


def _examples(
    tokenizer: Any, paths: Sequence[str], data: SFTData
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Tokenized examples (packed into blocks if asked) and the tokens cut by truncation."""
    seq_len = data.seq_len
    rendered = [
        tokenize_conversation(tokenizer, conv, template=data.chat_template)
        for conv in read_conversations(paths, field=data.messages_field)
    ]
    if data.packing:
        ids = [t for example, _ in rendered for t in example]
        labels = [t for _, example in rendered for t in example]
        blocks = [
            (ids[i : i + seq_len], labels[i : i + seq_len]) for i in range(0, len(ids), seq_len)
        ]
        return blocks, 0
    truncated = sum(max(0, len(ids) - seq_len) for ids, _ in rendered)
    return [(ids[:seq_len], labels[:seq_len]) for ids, labels in rendered], truncated


def _pad_batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Right-padded (B, T) tensors; padding is masked out of attention and loss."""
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


if __name__ == "__main__":
    sys.exit(main(recipe_class=SFTRecipe))
