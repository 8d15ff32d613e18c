"""Token groups packed for one forward pass: the scoring fast path's layout.

`TransformersEngine.score_token_groups` scores a batch of (context, [continuation, ...]) groups
in ONE forward pass: the prefix every context of the batch shares (few-shot examples) once per
row, then each group's context followed by its continuations minus their last tokens, several
groups to a row, behind a block attention mask (`PackedGroups.attention_mask`); the output
layer sees only the positions that predict a scored token (`scored_positions_only`).
Tests: tests/test_score_fast_path.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

PAD, SHARED = -1, -2  # owners of a column that is padding / the batch's shared prefix


@dataclass(frozen=True)
class PackedGroups:
    """A batch of token groups laid out for one forward pass (see `pack_groups`)."""

    ids: torch.Tensor  # (R, T) token ids
    positions: torch.Tensor  # (R, T) position ids (each row's text starts at 0)
    owners: torch.Tensor  # (R, T) the group a column belongs to, or SHARED, or PAD
    segments: torch.Tensor  # (R, T) 0: context; k + 1: continuation k; -1: padding
    rows: torch.Tensor  # (N,) for each scored token: the row
    cols: torch.Tensor  # (N,) and column that predict it,
    targets: torch.Tensor  # (N,) and its id; group by group, continuation by continuation

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(R, 1, T, T) additive mask: 0 where a query may attend, dtype's min elsewhere.

        A query sees the keys at or before it that are the shared prefix, or its own group's
        context, or its own continuation; padding sees only itself (a fully masked row would
        give NaN).
        """
        width = self.ids.shape[1]
        q_owner, k_owner = self.owners[:, :, None], self.owners[:, None, :]  # (R,T,1), (R,1,T)
        q_seg, k_seg = self.segments[:, :, None], self.segments[:, None, :]
        own = (q_owner == k_owner) & (q_owner >= 0) & ((k_seg == 0) | (k_seg == q_seg))
        shared = (k_owner == SHARED) & (q_owner != PAD)
        causal = torch.ones(width, width, dtype=torch.bool).tril()  # (T, T)
        allowed = causal & (own | shared)  # (R, T, T)
        allowed |= torch.eye(width, dtype=torch.bool)
        blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
        return torch.where(allowed, torch.zeros((), dtype=dtype), blocked)[:, None]


def group_length(group: tuple[Sequence[int], Sequence[Sequence[int]]]) -> int:
    """Columns a group takes: its context and each continuation but its last token."""
    ctx, conts = group
    return len(ctx) + sum(max(len(cont) - 1, 0) for cont in conts)


def shared_prefix(batch: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]) -> int:
    """Tokens every context of the batch starts with (few-shot examples, a common preamble),
    leaving each context at least its last token of its own."""
    first = batch[0][0]
    limit = min(len(ctx) for ctx, _ in batch) - 1
    n = 0
    while n < limit and all(ctx[n] == first[n] for ctx, _ in batch):
        n += 1
    return n


def pack_groups(
    batch: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], pad: int
) -> PackedGroups:
    """Lay out groups as [shared prefix | context | cont 1[:-1] | cont 2[:-1] | ..] rows.

    The batch's shared context prefix (`shared_prefix`: the same token ids at the same
    positions, so the same values) starts each row once; after it, groups go first-fit into
    rows, longest first, several to a row where they fit, at the width `row_layout` finds
    cheapest. A group's last context token predicts the first token of each continuation;
    continuation k's token j >= 1 is predicted from its own token j - 1.
    """
    prefix = shared_prefix(batch)
    lengths = [group_length(group) - prefix for group in batch]
    width, placed, n_rows = row_layout(lengths, prefix)
    ids = torch.full((n_rows, width), pad, dtype=torch.long)  # (R, T)
    positions = torch.zeros_like(ids)
    owners = torch.full_like(ids, PAD)
    segments = torch.full_like(ids, -1)
    if prefix:
        ids[:, :prefix] = torch.tensor(list(batch[0][0][:prefix]))
        positions[:, :prefix] = torch.arange(prefix)
        owners[:, :prefix] = SHARED
        segments[:, :prefix] = 0
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    for g, (ctx, conts) in enumerate(batch):
        row, at = placed[g]
        n_ctx, own = len(ctx), len(ctx) - prefix  # own: context tokens after the prefix
        ids[row, at : at + own] = torch.tensor(list(ctx[prefix:]))
        positions[row, at : at + own] = torch.arange(prefix, n_ctx)
        owners[row, at : at + lengths[g]] = g
        segments[row, at : at + own] = 0
        used = at + own  # next free column of this group
        for k, cont in enumerate(conts):
            n = len(cont) - 1
            if n > 0:
                ids[row, used : used + n] = torch.tensor(list(cont[:-1]))
                positions[row, used : used + n] = torch.arange(n_ctx, n_ctx + n)
                segments[row, used : used + n] = k + 1
            rows += [row] * len(cont)
            cols += [at + own - 1, *range(used, used + n)][: len(cont)]  # none if empty
            targets += list(cont)
            used += max(n, 0)
    return PackedGroups(
        ids=ids,
        positions=positions,
        owners=owners,
        segments=segments,
        rows=torch.tensor(rows, dtype=torch.long),
        cols=torch.tensor(cols, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
    )


# Attention's share of a token's work grows with the row width: per layer about
# 4 * width * hidden FLOPs against ~26 * hidden^2 for the weights (Llama shapes: intermediate
# ~3 x hidden), i.e. width / (6.5 * hidden). 3000 is SmolLM2-135M's (hidden 576); bigger models
# pay relatively less for attention, so for them this only errs towards narrower rows.
ATTENTION_WIDTH = 3000


def row_layout(lengths: Sequence[int], prefix: int) -> tuple[int, list[tuple[int, int]], int]:
    """(row width, each group's (row, first column), row count) for the cheapest packing.

    Every row starts with the `prefix` shared columns. Tries widths from the longest group up
    to all groups in one row and keeps the one with the least work: columns computed (padding
    and each row's prefix included) times the attention overhead of the width.
    """
    best: tuple[float, int, list[tuple[int, int]], int] | None = None
    longest, total = max(lengths), sum(lengths)
    for target_rows in range(1, len(lengths) + 1):
        room = max(longest, -(-total // target_rows))
        placed, n_rows = first_fit(lengths, room)
        width = prefix + room
        cost = n_rows * width * (1 + width / ATTENTION_WIDTH)
        if best is None or cost < best[0]:
            best = (cost, width, [(r, prefix + c) for r, c in placed], n_rows)
    assert best is not None  # lengths is never empty
    return best[1], best[2], best[3]


def first_fit(lengths: Sequence[int], width: int) -> tuple[list[tuple[int, int]], int]:
    """Longest first, each group into the first row with room: ((row, column) each, rows)."""
    placed: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    free: list[int] = []  # columns left per row
    for g in sorted(range(len(lengths)), key=lambda g: -lengths[g]):
        row = next((r for r, left in enumerate(free) if left >= lengths[g]), len(free))
        if row == len(free):
            free.append(width)
        placed[g] = (row, width - free[row])
        free[row] -= lengths[g]
    return placed, len(free)


class HookState:
    fired = False


@contextmanager
def scored_positions_only(
    model: Any, rows: torch.Tensor, cols: torch.Tensor
) -> Iterator[HookState]:
    """While open, the model's output layer sees only the hidden states at (rows, cols).

    The vocabulary projection is a fifth of a small model's FLOPs per token; scoring needs it
    at a few positions per question. The hook picks them out of the (R, T, H) hidden states
    as one (1, N, H) input, so whatever the model does after its output layer (a logit scale,
    a soft cap) still applies. `fired` stays False for a model whose logits do not come from
    `get_output_embeddings()`: its logits are then full and the caller picks the positions.
    """
    state = HookState()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield state
        return

    def pick(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        hidden = args[0]
        if state.fired or hidden.dim() != 3:
            return None
        state.fired = True
        return (hidden[rows, cols][None], *args[1:])  # (1, N, H)

    handle = head.register_forward_pre_hook(pick)
    try:
        yield state
    finally:
        handle.remove()
