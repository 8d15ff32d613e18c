"""Training data: read text sources, tokenize, pack into fixed blocks, mix sources by weight.

Sources (one or more files each):
- .txt: each file is one document;
- .jsonl: one document per line, its text under `text_field`;
- .parquet: one document per row of the `text_field` column.

Packing: every document is tokenized without special tokens and followed by one EOS, the
documents of a source are concatenated in order and cut into blocks of `seq_len` tokens
(labels = inputs; the model shifts them). The only tokens lost are the last `< seq_len`
tokens of each source (the remainder), reported as `dropped_tokens`. Blocks may span a
document boundary; the EOS between them tells the model where one ends.

Mixture: `MixtureStream` hands out blocks source by source so that the realised token share
of each source tracks its weight (deterministic deficit scheduling: the source furthest below
its target goes next), reshuffling a source's blocks each time it is exhausted (so replay
data repeats rather than running dry). Its position is the number of blocks taken from each
source, which is all `resume` needs to continue the exact same stream.

    blocks = pack_documents(tokenize_documents(tok, read_documents(["a.jsonl"])), seq_len=64)
    stream = MixtureStream({"domain": d.blocks, "general": g.blocks}, {"domain": .8, ...}, seed=0)
    picks = stream.take(8)          # [(source, block index), ...]
    stream.position                 # {"domain": 6, "general": 2}

Tested by tests/test_train_data.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studio.training.config import DataFormat, TrainConfigError

LOG = logging.getLogger(__name__)

_SUFFIX_FORMATS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
_TOKENIZE_BATCH = 1000  # documents per tokenizer call (bounded memory, parallel inside)


# ---------------------------------------------------------------------- reading


def file_format(path: Path, declared: DataFormat) -> str:
    if declared != "auto":
        return declared
    found = _SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        raise TrainConfigError(
            f"cannot tell the format of {path} from its extension; name it .txt, .jsonl or "
            "parquet, or set `format:` on the source"
        )
    return found


def read_documents(
    paths: Sequence[str | Path], *, format: DataFormat = "auto", text_field: str = "text"
) -> list[str]:
    """The documents of every file, in file order; empty documents are skipped."""
    docs: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise TrainConfigError(f"data file {path} does not exist; check the source's paths")
        kind = file_format(path, format)
        if kind == "txt":
            docs.append(path.read_text(encoding="utf-8"))
        elif kind == "jsonl":
            docs.extend(_jsonl_field(path, text_field))
        else:
            docs.extend(_parquet_column(path, text_field))
    return [d for d in docs if d.strip()]


def read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; TrainConfigError naming a bad line."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise TrainConfigError(f"{path} line {number} is not JSON: {error}") from error
            if not isinstance(obj, dict):
                raise TrainConfigError(f"{path} line {number} must be a JSON object")
            yield number, obj


def _jsonl_field(path: Path, field: str) -> Iterable[str]:
    for number, obj in read_jsonl(path):
        value = obj.get(field)
        if not isinstance(value, str):
            raise TrainConfigError(
                f"{path} line {number} has no text field '{field}'; set `text_field:` to the key "
                f"that holds the text (this line has: {', '.join(obj) or 'no keys'})"
            )
        yield value


def _parquet_column(path: Path, field: str) -> list[str]:
    import pyarrow.parquet as pq  # imported here: only Parquet sources need it

    table = pq.read_table(path)
    if field not in table.column_names:
        raise TrainConfigError(
            f"{path} has no column '{field}'; set `text_field:` to one of {table.column_names}"
        )
    return [v for v in table.column(field).to_pylist() if isinstance(v, str)]


# ---------------------------------------------------------------------- tokenizing and packing


def tokenize_documents(tokenizer: Any, docs: Sequence[str]) -> list[list[int]]:
    """Token ids of each document followed by one EOS (no BOS or other special tokens)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrainConfigError(
            "the tokenizer has no EOS token; packing needs one between documents"
        )
    out: list[list[int]] = []
    for start in range(0, len(docs), _TOKENIZE_BATCH):
        batch = list(docs[start : start + _TOKENIZE_BATCH])
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        out.extend([*seq, eos] for seq in ids)
    return out


@dataclass(frozen=True)
class PackedBlocks:
    """A source's documents cut into (N, seq_len) blocks, and what packing left out."""

    blocks: torch.Tensor  # (N, seq_len) int64
    documents: int
    tokens: int  # all tokens, EOS included
    dropped_tokens: int  # the remainder, < seq_len
    remainder: torch.Tensor  # (dropped_tokens,) the tail that did not fill a block

    @property
    def seq_len(self) -> int:
        return int(self.blocks.shape[1])


def pack_documents(token_lists: Sequence[Sequence[int]], *, seq_len: int) -> PackedBlocks:
    """Concatenate the documents and cut them into full blocks of `seq_len` tokens."""
    flat = torch.tensor([t for doc in token_lists for t in doc], dtype=torch.long)  # (T,)
    full = (flat.numel() // seq_len) * seq_len
    return PackedBlocks(
        blocks=flat[:full].view(-1, seq_len),
        documents=len(token_lists),
        tokens=int(flat.numel()),
        dropped_tokens=int(flat.numel() - full),
        remainder=flat[full:],
    )


def eval_blocks(packed: PackedBlocks, *, limit: int) -> list[torch.Tensor]:
    """Up to `limit` blocks of held-out text; a text shorter than one block is used whole."""
    blocks = list(packed.blocks[:limit])
    if not blocks and packed.remainder.numel() > 1:
        blocks = [packed.remainder]
    return blocks


# ---------------------------------------------------------------------- mixture


class MixtureStream:
    """Blocks from several sources in proportion to their weights, resumable by position.

    Items are addressed as (source, index into that source's items), so the same stream drives
    fixed blocks (CPT) and variable-length examples (SFT). Every process builds the same stream
    and takes its own slice of each global batch.
    """

    def __init__(
        self,
        sizes: Mapping[str, int],
        weights: Mapping[str, float],
        *,
        seed: int,
        position: Mapping[str, int] | None = None,
    ) -> None:
        empty = [name for name, n in sizes.items() if n <= 0]
        if empty:
            raise TrainConfigError(
                f"source {empty[0]} has no full block of data; add text or lower data.seq_len"
            )
        total = sum(weights[name] for name in sizes)
        self.names = list(sizes)
        self.sizes = dict(sizes)
        self.weights = {name: weights[name] / total for name in sizes}
        self.seed = seed
        self.taken = {name: int((position or {}).get(name, 0)) for name in sizes}
        self._orders: dict[tuple[str, int], torch.Tensor] = {}

    @property
    def position(self) -> dict[str, int]:
        return dict(self.taken)

    def take(self, count: int) -> list[tuple[str, int]]:
        """The next `count` items as (source, index)."""
        return [self._next() for _ in range(count)]

    def _next(self) -> tuple[str, int]:
        # Deficit scheduling: after this pick there will be `total + 1` items; give it to the
        # source whose taken count is furthest below its weighted target (ties: config order).
        total = sum(self.taken.values()) + 1
        name = max(self.names, key=lambda n: self.weights[n] * total - self.taken[n])
        index = self.taken[name]
        self.taken[name] += 1
        epoch, offset = divmod(index, self.sizes[name])
        return name, int(self._order(name, epoch)[offset])

    def _order(self, name: str, epoch: int) -> torch.Tensor:
        key = (name, epoch)
        if key not in self._orders:
            # A fresh permutation per source and pass; a function of (seed, source, epoch)
            # only, so a resumed run reproduces it without saved RNG state.
            generator = torch.Generator().manual_seed(
                self.seed * 1_000_003 + self.names.index(name) * 10_007 + epoch
            )
            self._orders = {k: v for k, v in self._orders.items() if k[0] != name}
            self._orders[key] = torch.randperm(self.sizes[name], generator=generator)
        return self._orders[key]
