"""Training data: readers, packing (every token kept, EOS at document ends), weighted mixture.

.venv/bin/python -m pytest -q tests/test_train_data.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from pipelines.data import (
    MixtureStream,
    eval_blocks,
    pack_documents,
    read_documents,
    tokenize_documents,
)
from pipelines.tiny_models import DOMAIN_TEXT, GENERAL_TEXT
from studio.training.config import TrainConfigError


@pytest.fixture(scope="module")
def tokenizer(tiny_family: dict[str, Path]):
    return AutoTokenizer.from_pretrained(tiny_family["base"])


def test_readers_give_the_same_documents_from_txt_jsonl_and_parquet(tmp_path: Path) -> None:
    """txt = one document per file; JSONL = one per line; Parquet = one per row; order kept."""
    docs = ["first document .", "second one", "third ."]
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(doc, encoding="utf-8")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": docs}), parquet)

    assert read_documents([tmp_path / f"{i}.txt" for i in range(3)]) == docs
    assert read_documents([jsonl], text_field="body") == docs
    assert read_documents([parquet], text_field="body") == docs
    with pytest.raises(TrainConfigError, match="text field 'text'.*body, id"):
        read_documents([jsonl])
    with pytest.raises(TrainConfigError, match="no column 'text'"):
        read_documents([parquet])
    with pytest.raises(TrainConfigError, match="does not exist"):
        read_documents([tmp_path / "missing.jsonl"])


def test_packing_keeps_every_token_with_eos_at_document_ends(tokenizer) -> None:
    """Blocks + remainder are exactly the documents' tokens, each document followed by EOS."""
    docs = [d for _ in range(3) for d in DOMAIN_TEXT + GENERAL_TEXT]
    token_lists = tokenize_documents(tokenizer, docs)
    packed = pack_documents(token_lists, seq_len=16)

    expected = [t for doc in docs for t in tokenizer(doc, add_special_tokens=False)["input_ids"]]
    stream = torch.cat([packed.blocks.flatten(), packed.remainder]).tolist()
    # every document ends with exactly one EOS, and nothing else is EOS
    eos = tokenizer.eos_token_id
    ends = []
    position = 0
    for tokens in token_lists:
        position += len(tokens)
        ends.append(position - 1)
    assert [i for i, t in enumerate(stream) if t == eos] == ends
    assert [t for t in stream if t != eos] == expected
    assert packed.tokens == len(stream) == len(expected) + len(docs)
    assert packed.blocks.shape == (len(stream) // 16, 16)
    assert packed.dropped_tokens == len(stream) % 16 == packed.remainder.numel()


def test_eval_uses_short_text_whole(tokenizer) -> None:
    """Held-out text shorter than one block is still evaluated (as one shorter block)."""
    packed = pack_documents(tokenize_documents(tokenizer, ["paris is the capital ."]), seq_len=64)
    assert packed.blocks.shape[0] == 0
    blocks = eval_blocks(packed, limit=4)
    assert len(blocks) == 1 and blocks[0].tolist() == packed.remainder.tolist()


def test_mixture_shares_within_two_points_over_10k_tokens() -> None:
    """Realised token shares track the weights (0.6/0.3/0.1) within 2 points over 10k tokens,
    also when a small source is exhausted and repeats."""
    seq_len = 32
    sizes = {"domain": 200, "general": 50, "code": 7}
    weights = {"domain": 6.0, "general": 3.0, "code": 1.0}  # normalised by the stream
    stream = MixtureStream(sizes, weights, seed=0)
    picks = stream.take(10_000 // seq_len + 1)
    tokens = {name: 0 for name in sizes}
    for name, index in picks:
        assert 0 <= index < sizes[name]
        tokens[name] += seq_len
    total = sum(tokens.values())
    assert total >= 10_000
    for name, weight in weights.items():
        assert abs(tokens[name] / total - weight / 10) <= 0.02, (name, tokens)
    # the 7-block source was used several times over, each pass a permutation of all its blocks
    code = [i for n, i in picks if n == "code"]
    assert len(code) > 14 and sorted(code[:7]) == list(range(7)) == sorted(code[7:14])


def test_mixture_resumes_the_same_stream_from_its_position() -> None:
    """A stream rebuilt from `position` hands out exactly what the original would have next."""
    sizes, weights = {"a": 13, "b": 5}, {"a": 0.8, "b": 0.2}
    whole = MixtureStream(sizes, weights, seed=3).take(60)
    first = MixtureStream(sizes, weights, seed=3)
    head = first.take(25)
    rest = MixtureStream(sizes, weights, seed=3, position=first.position).take(35)
    assert head + rest == whole
    assert MixtureStream(sizes, weights, seed=4).take(60) != whole  # the seed matters


def test_mixture_refuses_a_source_without_a_block() -> None:
    with pytest.raises(TrainConfigError, match="source b has no full block"):
        MixtureStream({"a": 3, "b": 0}, {"a": 1.0, "b": 1.0}, seed=0)
