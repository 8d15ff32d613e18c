"""Task-vector diagnostics of two fine-tunes of one base: how big, how aligned, how conflicting.

These are the numbers behind the case study's claims, per layer and module group (attention,
MLP, embeddings, norms), so a user can check them on their own models:

- task-vector norms ||a - base||, ||b - base|| (how far each fine-tune moved);
- cosine between the two task vectors (near 0: they are nearly orthogonal and barely interfere,
  so TIES' trimming and sign election change little -- Yadav et al. 2023, arXiv:2306.01708);
- cosine between the flattened parents a and b themselves (near 1: the weights are nearly
  collinear, so SLERP's arc is nearly the chord and SLERP ~ linear);
- at a chosen density: the fraction of elements magnitude trimming drops, the fraction of sign
  conflicts among elements both trimmed task vectors keep, and the fraction of kept elements
  TIES' sign election (equal weights) then drops, and the share of each task vector's norm the
  trimming keeps (with one task vector, as when the chat model is also the base, trimming is all
  TIES does: a merge along a kept share of 0.9 is close to linear at 0.9 x the weight).

Rows are frozen dataclasses (`DiagnosticRow`); `DiagnosticsReport.records()` gives plain dicts a
plotly heatmap (layer x group) or a table can use. Added vocabulary rows (a chat model with 32017
tokens over a 32000-token base) are compared on the shared rows and counted separately.

    report = diagnose(live_merger, density=0.5)   # or diagnose_models(base, a, b, density=0.5)
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from studio.errors import CompatibilityError
from studio.merging import fast_methods as fm

if TYPE_CHECKING:
    from studio.merging.live import LiveMerger

LOG = logging.getLogger(__name__)

ModuleGroup = Literal["attention", "mlp", "embeddings", "norms", "other"]
GROUPS: tuple[ModuleGroup, ...] = ("embeddings", "attention", "mlp", "norms", "other")
_LAYER = re.compile(r"\.layers?\.(\d+)\.")
_CHUNK = 1 << 20  # elements per float32 chunk when reducing big tensors


def module_group(name: str) -> ModuleGroup:
    """Which module group a tensor name belongs to (Llama-style names; others -> "other")."""
    lowered = name.lower()
    if "embed" in lowered or "lm_head" in lowered or "wte" in lowered:
        return "embeddings"
    if "norm" in lowered or ".ln_" in lowered:
        return "norms"
    if "attn" in lowered or "attention" in lowered:
        return "attention"
    if "mlp" in lowered or "feed_forward" in lowered or ".ffn" in lowered:
        return "mlp"
    return "other"


def layer_index(name: str) -> int | None:
    """Decoder layer number in a tensor name, None outside the layer stack."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class TensorStats:
    """Additive sums over elements of one or more tensors; rows are ratios of these."""

    numel: int = 0
    tensors: int = 0
    sq_a: float = 0.0  # sum (a - base)^2
    sq_b: float = 0.0
    dot_ab: float = 0.0  # sum (a - base)(b - base)
    sq_parent_a: float = 0.0  # sum a^2
    sq_parent_b: float = 0.0
    dot_parents: float = 0.0  # sum a * b
    kept_a: int = 0  # elements magnitude trimming keeps at the density
    kept_b: int = 0
    kept_both: int = 0  # kept in both (and non-zero in both)
    conflicts: int = 0  # of those, with opposite signs
    election_dropped: int = 0  # kept elements whose sign loses TIES' election (equal weights)
    sq_kept_a: float = 0.0  # sum of the squares magnitude trimming keeps of (a - base)
    sq_kept_b: float = 0.0

    def __add__(self, other: TensorStats) -> TensorStats:
        return TensorStats(
            **{k: getattr(self, k) + getattr(other, k) for k in self.__dataclass_fields__}
        )


def _cosine(dot: float, sq_x: float, sq_y: float) -> float:
    denominator = math.sqrt(sq_x) * math.sqrt(sq_y)
    return dot / denominator if denominator > 0 else float("nan")


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else float("nan")


def _norm_share(sq_part: float, sq_whole: float) -> float:
    return math.sqrt(sq_part / sq_whole) if sq_whole > 0 else float("nan")


@dataclass(frozen=True)
class DiagnosticRow:
    """Diagnostics of one (layer, module group), or of a whole group / model (layer None)."""

    layer: int | None  # None: outside the layer stack, or a summary
    group: str  # a ModuleGroup, or "all"
    tensors: int
    parameters: int
    task_vector_norm_a: float
    task_vector_norm_b: float
    task_vector_cosine: float  # cos(a - base, b - base)
    parent_cosine: float  # cos(a, b): ~1 means SLERP ~ linear
    trimmed_fraction: float  # elements magnitude trimming drops at the density (both parents)
    sign_conflict_fraction: float  # opposite signs among elements both trimmed vectors keep
    election_dropped_fraction: float  # kept elements TIES' sign election drops
    kept_norm_share_a: float  # |trimmed (a - base)| / |a - base| at the density
    kept_norm_share_b: float

    @classmethod
    def from_stats(cls, stats: TensorStats, *, layer: int | None, group: str) -> DiagnosticRow:
        kept = stats.kept_a + stats.kept_b
        return cls(
            layer=layer,
            group=group,
            tensors=stats.tensors,
            parameters=stats.numel,
            task_vector_norm_a=math.sqrt(stats.sq_a),
            task_vector_norm_b=math.sqrt(stats.sq_b),
            task_vector_cosine=_cosine(stats.dot_ab, stats.sq_a, stats.sq_b),
            parent_cosine=_cosine(stats.dot_parents, stats.sq_parent_a, stats.sq_parent_b),
            trimmed_fraction=1 - _ratio(kept, 2 * stats.numel),
            sign_conflict_fraction=_ratio(stats.conflicts, stats.kept_both),
            election_dropped_fraction=_ratio(stats.election_dropped, kept),
            kept_norm_share_a=_norm_share(stats.sq_kept_a, stats.sq_a),
            kept_norm_share_b=_norm_share(stats.sq_kept_b, stats.sq_b),
        )


@dataclass(frozen=True)
class DiagnosticsReport:
    """Rows per (layer, group), per group, and for the whole model."""

    base: str
    model_a: str
    model_b: str
    density: float
    rows: tuple[DiagnosticRow, ...]  # one per (layer, group) present, layers in order
    groups: tuple[DiagnosticRow, ...]  # one per group over all layers
    summary: DiagnosticRow  # whole model
    added_tokens: Mapping[str, int] = field(default_factory=dict)  # model -> vocab rows beyond base
    skipped: tuple[str, ...] = ()  # tensors whose shapes differ beyond the vocabulary

    def records(self) -> list[dict[str, object]]:
        """Plain dicts of `rows` (for a plotly heatmap: x=layer, y=group, z=any metric)."""
        return [asdict(row) for row in self.rows]


def tensor_stats(
    base: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, density: float = 0.5
) -> TensorStats:
    """Sums for one tensor. All three must have one shape; any float dtype (reduced in float32
    chunks, accumulated in float64)."""
    if not (base.shape == a.shape == b.shape):
        raise CompatibilityError(
            f"tensors of shapes {tuple(base.shape)}, {tuple(a.shape)}, {tuple(b.shape)} cannot be"
            " compared: diagnose models of one architecture"
        )
    flat = [t.reshape(-1) for t in (base, a, b)]
    sums = dict.fromkeys(
        ("sq_a", "sq_b", "dot_ab", "sq_parent_a", "sq_parent_b", "dot_parents"), 0.0
    )
    for start, stop in fm.chunks(base.numel(), _CHUNK):
        x0, xa, xb = (t[start:stop].float() for t in flat)  # (L,) each
        da, db = xa - x0, xb - x0
        sums["sq_a"] += float(torch.dot(da, da))
        sums["sq_b"] += float(torch.dot(db, db))
        sums["dot_ab"] += float(torch.dot(da, db))
        sums["sq_parent_a"] += float(torch.dot(xa, xa))
        sums["sq_parent_b"] += float(torch.dot(xb, xb))
        sums["dot_parents"] += float(torch.dot(xa, xb))
    return TensorStats(
        numel=base.numel(),
        tensors=1,
        **sums,
        **_trim_stats(a.float() - base.float(), b.float() - base.float(), density),
    )


def _kept(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of what TIES' magnitude trimming keeps (exactly k elements)."""
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    if density <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    threshold = fm.MagnitudeIndex(delta).threshold(delta, density)
    return fm.magnitude_keep_mask(delta, threshold) > 0


def _trim_stats(da: torch.Tensor, db: torch.Tensor, density: float) -> dict[str, int | float]:
    keep_a = _kept(da, density) & (da != 0)
    keep_b = _kept(db, density) & (db != 0)
    sign_a = torch.where(keep_a, da.sign(), 0)
    sign_b = torch.where(keep_b, db.sign(), 0)
    both = keep_a & keep_b
    # TIES election with equal weights: the sign of the sum of the trimmed vectors (>= 0 -> +)
    majority = torch.where((sign_a * da.abs() + sign_b * db.abs()) >= 0, 1.0, -1.0)
    dropped = (keep_a & (sign_a != majority)).sum() + (keep_b & (sign_b != majority)).sum()
    return {
        "kept_a": int(keep_a.sum()),
        "kept_b": int(keep_b.sum()),
        "kept_both": int(both.sum()),
        "conflicts": int((both & (sign_a != sign_b)).sum()),
        "election_dropped": int(dropped),
        "sq_kept_a": float(torch.where(keep_a, da, 0).double().square().sum()),
        "sq_kept_b": float(torch.where(keep_b, db, 0).double().square().sum()),
    }


def diagnose_models(
    base: Mapping[str, torch.Tensor],
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    *,
    density: float = 0.5,
    names: tuple[str, str, str] = ("base", "a", "b"),
) -> DiagnosticsReport:
    """Diagnostics of two task vectors over every floating tensor the three models share."""
    per_cell: dict[tuple[int | None, str], TensorStats] = {}
    added: dict[str, int] = {}
    skipped: list[str] = []
    for name, x0 in base.items():
        if name not in a or name not in b or not x0.is_floating_point():
            continue
        xa, xb = a[name], b[name]
        if xa.shape[1:] != x0.shape[1:] or xb.shape[1:] != x0.shape[1:]:
            skipped.append(name)
            continue
        if xa.shape[0] != x0.shape[0] or xb.shape[0] != x0.shape[0]:
            # extra vocabulary rows: compare the shared ones, count the rest per model
            for label, tensor in ((names[1], xa), (names[2], xb)):
                added[label] = max(added.get(label, 0), tensor.shape[0] - x0.shape[0])
            rows = min(x0.shape[0], xa.shape[0], xb.shape[0])
            x0, xa, xb = x0[:rows], xa[:rows], xb[:rows]
        stats = tensor_stats(x0, xa, xb, density=density)
        key = (layer_index(name), module_group(name))
        per_cell[key] = per_cell.get(key, TensorStats()) + stats
    if skipped:
        LOG.warning(
            "diagnostics skipped %d tensors whose shapes differ: %s", len(skipped), skipped[:3]
        )
    ordered = sorted(per_cell, key=lambda k: (k[0] is not None, k[0] or 0, GROUPS.index(k[1])))
    rows = tuple(DiagnosticRow.from_stats(per_cell[k], layer=k[0], group=k[1]) for k in ordered)
    group_rows = []
    for group in GROUPS:
        cells = [s for (layer, g), s in per_cell.items() if g == group]
        if cells:
            group_rows.append(
                DiagnosticRow.from_stats(sum(cells, TensorStats()), layer=None, group=group)
            )
    summary = DiagnosticRow.from_stats(
        sum(per_cell.values(), TensorStats()), layer=None, group="all"
    )
    return DiagnosticsReport(
        base=names[0],
        model_a=names[1],
        model_b=names[2],
        density=density,
        rows=rows,
        groups=tuple(group_rows),
        summary=summary,
        added_tokens={k: v for k, v in added.items() if v},
        skipped=tuple(skipped),
    )


def diagnose(
    merger: LiveMerger,
    *,
    parents: tuple[str, str] | None = None,
    density: float = 0.5,
) -> DiagnosticsReport:
    """Diagnostics of the parents a live merger already holds (no loading).

    `parents` picks two of its non-base models (default: the first two).
    """
    base = merger.base_model
    if base is None:
        raise CompatibilityError(
            "diagnostics compare task vectors: load the live merger with a base model"
        )
    candidates = [m for m in merger.models if m != base]
    chosen = list(parents) if parents is not None else candidates[:2]
    if len(chosen) != 2:
        raise CompatibilityError(
            f"diagnostics compare two fine-tunes of the base; the merger holds {len(candidates)}:"
            " load two parents besides the base"
        )
    return diagnose_models(
        merger.held_tensors(base),
        merger.held_tensors(chosen[0]),
        merger.held_tensors(chosen[1]),
        density=density,
        names=(base, chosen[0], chosen[1]),
    )
