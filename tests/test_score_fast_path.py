"""The transformers engine's packed scoring pass equals scoring each pair on its own.

`TransformersEngine.score_token_groups` runs up to `batch_size` token groups (a context and its
continuations) in one forward pass: the batch's shared context prefix once per row, groups
packed several to a row behind a block attention mask, the output layer only on the scored
positions. Properties checked on a real tiny Llama in fp32:

- every continuation's token log-probs equal `score_loglikelihoods` on the same pair (one row
  per pair, no packing) within 1e-4, and its greedy flag is the same, for one-token and
  multi-token continuations, contexts of mixed lengths, contexts sharing a long prefix (few-shot
  examples) or none, and every batch size from 1 to all groups at once (batch boundaries);
- the layout puts each group in one row after the shared prefix, with no column used twice,
  and the mask lets a token see exactly the shared prefix, its own context and its own
  continuation's earlier tokens.

Run: `.venv/bin/python -m pytest -q tests/test_score_fast_path.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from studio.evaluation.loglikelihood import encode_pair
from studio.inference.engine import ModelSpec
from studio.inference.packing import PAD, SHARED, pack_groups, shared_prefix
from studio.inference.transformers_engine import TransformersEngine

QUESTIONS = [
    ("paris is the capital of", ["france", "the sea", "kelm fever", "a cat"]),
    ("the sun rises in the", ["west", "east", "library", "river flows to the sea"]),
    ("water boils at one hundred", ["books", "patients", "degrees", "eye"]),
    ("a cat is an animal that likes to", ["read books", "take two doses", "sea", "sleep"]),
    ("zorvex treats the", ["kelm fever", "eye", "capital", "river"]),
    ("the drug miravine lowers pressure in the", ["library", "eye", "sun", "water"]),
    ("people read", ["books in the library", "the sea"]),
]
SHOTS = "the sun rises in the east\n\nparis is the capital of france\n\n"


@pytest.fixture(scope="module")
def engine(tiny_family: dict[str, Path]) -> TransformersEngine:
    loaded = TransformersEngine(ModelSpec.from_path(tiny_family["chat"], dtype="float32"))
    loaded.load()
    return loaded


def _groups(
    engine: TransformersEngine, prefix: str
) -> tuple[list[tuple[list[int], list[list[int]]]], list[tuple[str, str]]]:
    tok = engine.tokenizer
    groups, pairs = [], []
    for question, options in QUESTIONS:
        encoded = [encode_pair(tok, prefix + question, " " + option) for option in options]
        groups.append((encoded[0][0], [cont for _, cont in encoded]))
        pairs += [(prefix + question, " " + option) for option in options]
    return groups, pairs


@pytest.mark.parametrize("prefix", ["", SHOTS], ids=["no-shared-prefix", "few-shot-prefix"])
@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_packed_pass_equals_per_pair_scoring(
    engine: TransformersEngine, prefix: str, batch_size: int
) -> None:
    """Each continuation scores as it does alone, whatever the batch and shared prefix."""
    groups, pairs = _groups(engine, prefix)
    lengths = {len(cont) for _, conts in groups for cont in conts}
    assert 1 in lengths and max(lengths) >= 3  # one-token and multi-token continuations
    assert len({len(ctx) for ctx, _ in groups}) >= 4  # contexts of mixed lengths
    grouped = engine.score_token_groups(groups, batch_size=batch_size)
    single = iter(engine.score_loglikelihoods(pairs, batch_size=1))
    for (ctx, conts), results in zip(groups, grouped, strict=True):
        assert len(results) == len(conts)
        for cont, result in zip(conts, results, strict=True):
            expected = next(single)
            assert list(result.context_tokens) == ctx
            assert list(result.continuation_tokens) == cont == list(expected.continuation_tokens)
            assert result.token_logprobs == pytest.approx(expected.token_logprobs, abs=1e-4)
            assert result.is_greedy == expected.is_greedy


def test_few_shot_batches_share_their_prefix(engine: TransformersEngine) -> None:
    """Contexts that start with the same examples share those tokens (computed once a row)."""
    groups, _ = _groups(engine, SHOTS)
    shots = engine.tokenizer(SHOTS.rstrip())["input_ids"]
    assert shared_prefix(groups) >= len(shots) - 1  # the join may merge the last token
    plain, _ = _groups(engine, "")
    assert shared_prefix(plain) < 2


def test_layout_and_mask_keep_each_group_to_itself() -> None:
    """Hand-made groups: every column belongs to one group, the mask is the block structure."""
    batch = [
        ([5, 6, 7, 8], [[9], [10, 11, 12]]),
        ([5, 6, 7], [[13, 14], [15]]),
        ([5, 6, 20, 21, 22, 23], [[24]]),
    ]
    packed = pack_groups(batch, pad=0)
    assert shared_prefix(batch) == 2  # [5, 6]; every context keeps its last token its own
    owners, segments = packed.owners, packed.segments
    assert bool((owners[:, :2] == SHARED).all())
    assert packed.ids[:, :2].tolist() == [[5, 6]] * owners.shape[0]
    # every group lies in one row: its context after the prefix, then its continuations
    for g, (ctx, conts) in enumerate(batch):
        row, cols = torch.nonzero(owners == g, as_tuple=True)
        assert len(set(row.tolist())) == 1
        expected = ctx[2:] + [t for cont in conts for t in cont[:-1]]
        assert packed.ids[row, cols].tolist() == expected
        assert packed.positions[row, cols].tolist() == list(range(2, 2 + len(expected)))
    # scored tokens: one per continuation token, predicted from the right column
    targets = [t for _, conts in batch for cont in conts for t in cont]
    assert packed.targets.tolist() == targets
    mask = packed.attention_mask(torch.float32)[:, 0] == 0  # (R, T, T) allowed
    for r in range(owners.shape[0]):
        for q in range(owners.shape[1]):
            for k in range(owners.shape[1]):
                qo, ko = int(owners[r, q]), int(owners[r, k])
                qs, ks = int(segments[r, q]), int(segments[r, k])
                if qo == PAD:
                    want = q == k
                else:
                    same = qo == ko and (ks == 0 or ks == qs)
                    want = q == k or (k <= q and (ko == SHARED or same))
                assert bool(mask[r, q, k]) == want, (r, q, k)
