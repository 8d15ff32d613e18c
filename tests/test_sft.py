"""The SFT pipeline: assistant-only labels (token by token), packing, a short run on a tiny Llama.

.venv/bin/python -m pytest -q tests/test_sft.py
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState
from transformers import AutoTokenizer

from pipelines.sft import IGNORE, SFTRecipe, _examples, tokenize_conversation
from studio.catalog.registry import list_models
from studio.training.checkpoints import list_checkpoints
from studio.training.config import SFTConfig, SFTData, TrainConfigError
from studio.training.runlog import EvalRecord, StepRecord, read_run_log

CONVERSATION = [
    {"role": "system", "content": "hello !"},
    {"role": "user", "content": "what is the capital of france ?"},
    {"role": "assistant", "content": "paris ."},
    {"role": "user", "content": "where does the sun rise ?"},
    {"role": "assistant", "content": "in the east ."},
]


@pytest.fixture(autouse=True)
def fresh_accelerate() -> Iterator[None]:
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_family: dict[str, Path]):
    return AutoTokenizer.from_pretrained(tiny_family["chat"])


def test_labels_are_ignored_everywhere_but_assistant_tokens(chat_tokenizer) -> None:
    """ChatML rendering, token by token: only each reply and its <|im_end|> are targets."""
    ids, labels = tokenize_conversation(chat_tokenizer, CONVERSATION)
    tokens = chat_tokenizer.convert_ids_to_tokens(ids)
    # (token, is a target) for the whole rendered conversation ("?" and "system" are <unk> in
    # the tiny vocabulary)
    expected = [
        ("<|im_start|>", False), ("<unk>", False), ("hello", False), ("!", False),
        ("<|im_end|>", False),
        ("<|im_start|>", False), ("user", False), ("what", False), ("is", False),
        ("the", False), ("capital", False), ("of", False), ("france", False), ("<unk>", False),
        ("<|im_end|>", False),
        ("<|im_start|>", False), ("assistant", False),
        ("paris", True), (".", True), ("<|im_end|>", True),
        ("<|im_start|>", False), ("user", False), ("where", False), ("does", False),
        ("the", False), ("sun", False), ("rise", False), ("<unk>", False), ("<|im_end|>", False),
        ("<|im_start|>", False), ("assistant", False),
        ("in", True), ("the", True), ("east", True), (".", True), ("<|im_end|>", True),
    ]  # fmt: skip
    assert tokens == [t for t, _ in expected]
    for token_id, label, (token, target) in zip(ids, labels, expected, strict=True):
        assert label == (token_id if target else IGNORE), token


def test_llama2_template_override_labels_the_reply(chat_tokenizer) -> None:
    """A named template (llama2) works the same way: reply + </s> are the only targets."""
    messages = CONVERSATION[1:3]
    ids, labels = tokenize_conversation(chat_tokenizer, messages, template="llama2")
    targets = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert chat_tokenizer.convert_ids_to_tokens(targets) == ["paris", ".", "</s>"]
    assert all(label in (IGNORE, token) for token, label in zip(ids, labels, strict=True))


def test_a_conversation_must_not_open_with_the_assistant(chat_tokenizer) -> None:
    with pytest.raises(TrainConfigError, match="starts with an assistant turn"):
        tokenize_conversation(chat_tokenizer, [{"role": "assistant", "content": "hi"}])


def write_chat(path: Path, count: int) -> Path:
    rows = [{"messages": CONVERSATION[1:3] if i % 2 else CONVERSATION} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_packing_keeps_labels_with_their_tokens(chat_tokenizer, tmp_path: Path) -> None:
    """Packed blocks are the examples concatenated; labels move with their tokens."""
    data_file = write_chat(tmp_path / "chat.jsonl", 5)
    plain, _ = _examples(chat_tokenizer, [str(data_file)], SFTData(paths=["x"], seq_len=64))
    packed, _ = _examples(
        chat_tokenizer, [str(data_file)], SFTData(paths=["x"], seq_len=16, packing=True)
    )
    assert all(len(ids) == 16 for ids, _ in packed[:-1]) and len(packed[-1][0]) <= 16
    assert [t for ids, _ in packed for t in ids] == [t for ids, _ in plain for t in ids]
    assert [t for _, labs in packed for t in labs] == [t for _, labs in plain for t in labs]


def test_sft_run_learns_replies_and_lands_in_the_catalog(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """A short SFT run lowers the held-out loss on replies; its checkpoint is in the catalog."""
    out = tmp_path / "sft"
    config = SFTConfig.model_validate(
        {
            "kind": "sft",
            "model": str(tiny_family["base"]),
            "output_dir": str(out),
            "micro_batch_size": 4,
            "max_steps": 10,
            "schedule": {"preset": "constant", "lr": 3e-3, "warmup_steps": 1},
            "eval_every": 5,
            "save_every": 10,
            "data": {
                "paths": [str(write_chat(tmp_path / "train.jsonl", 12))],
                "eval_paths": [str(write_chat(tmp_path / "eval.jsonl", 2))],
                "chat_template": "chatml",
                "seq_len": 64,
            },
        }
    )
    recipe = SFTRecipe(config)
    try:
        end = recipe.run()
    finally:
        recipe.close()
    assert (end.reason, end.step) == ("completed", 10)
    records = read_run_log(out / "metrics.jsonl")
    evals = [r.losses["chat"] for r in records if isinstance(r, EvalRecord)]
    steps = [r for r in records if isinstance(r, StepRecord)]
    assert len(evals) == 2 and evals[-1] < evals[0]
    assert len(steps) == 10 and steps[-1].loss < steps[0].loss
    checkpoint = list_checkpoints(out)[-1]
    assert Path(checkpoint.path).name == "step-00000010"
    assert checkpoint.path in {m.path for m in list_models()}
