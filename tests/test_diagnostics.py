"""Task-vector diagnostics: exact values on hand-made tensors, and a row per layer on real models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from studio.errors import CompatibilityError
from studio.merging.diagnostics import (
    DiagnosticRow,
    diagnose,
    diagnose_models,
    layer_index,
    module_group,
    tensor_stats,
)
from studio.merging.live import LiveMerger


def row(
    base: torch.Tensor, a: torch.Tensor, b: torch.Tensor, density: float = 1.0
) -> DiagnosticRow:
    return DiagnosticRow.from_stats(tensor_stats(base, a, b, density=density), layer=0, group="mlp")


def test_norms_and_cosines_of_known_vectors() -> None:
    """Orthogonal task vectors have cosine 0; norms are Euclidean; parents near a shared base are
    nearly collinear even when their task vectors are orthogonal (why SLERP ~ linear)."""
    base = torch.full((4,), 10.0)
    a = base + torch.tensor([3.0, 4.0, 0.0, 0.0])
    b = base + torch.tensor([0.0, 0.0, 1.0, 0.0])
    r = row(base, a, b)
    assert r.task_vector_norm_a == pytest.approx(5.0)
    assert r.task_vector_norm_b == pytest.approx(1.0)
    assert r.task_vector_cosine == pytest.approx(0.0)
    expected_parent = float(a @ b) / (float(a.norm()) * float(b.norm()))
    assert r.parent_cosine == pytest.approx(expected_parent)
    assert r.parent_cosine > 0.95
    same = row(base, a, a)
    assert same.task_vector_cosine == pytest.approx(1.0) and same.parent_cosine == pytest.approx(
        1.0
    )
    opposite = row(base, a, 2 * base - a)
    assert opposite.task_vector_cosine == pytest.approx(-1.0)


def test_sign_conflicts_trimming_and_election_at_a_density() -> None:
    """density 0.5 of 8 elements keeps the 4 largest |delta| of each vector; among positions both
    keep, the opposite-signed ones are conflicts; equal-weight TIES election drops the smaller."""
    base = torch.zeros(8)
    da = torch.tensor([8.0, -7.0, 6.0, 5.0, 0.1, 0.2, 0.3, 0.4])  # keeps 0..3
    db = torch.tensor([-1.0, -9.0, 4.0, 0.01, 3.0, 0.02, 0.03, 0.04])  # keeps 0, 1, 2, 4
    stats = tensor_stats(base, da, db, density=0.5)
    assert (stats.kept_a, stats.kept_b, stats.kept_both) == (4, 4, 3)
    assert stats.conflicts == 1  # position 0: +8 vs -1
    assert stats.election_dropped == 1  # -1 loses to +8; nothing else disagrees with the sum
    r = DiagnosticRow.from_stats(stats, layer=3, group="attention")
    assert r.sign_conflict_fraction == pytest.approx(1 / 3)
    assert r.trimmed_fraction == pytest.approx(0.5)
    assert r.election_dropped_fraction == pytest.approx(1 / 8)
    kept_sq_a, kept_sq_b = 64 + 49 + 36 + 25, 1 + 81 + 16 + 9
    assert r.kept_norm_share_a == pytest.approx(math.sqrt(kept_sq_a / float(da.square().sum())))
    assert r.kept_norm_share_b == pytest.approx(math.sqrt(kept_sq_b / float(db.square().sum())))
    dense = tensor_stats(base, da, db, density=1.0)
    assert dense.kept_both == 8 and dense.conflicts == 1  # only position 0 has opposite signs


def test_zero_task_vector_gives_nan_cosine_not_an_error() -> None:
    base = torch.ones(5)
    r = row(base, base.clone(), base + 1)
    assert r.task_vector_norm_a == 0.0
    assert math.isnan(r.task_vector_cosine)


def test_names_map_to_layers_and_groups() -> None:
    assert module_group("model.layers.3.self_attn.q_proj.weight") == "attention"
    assert module_group("model.layers.3.mlp.down_proj.weight") == "mlp"
    assert module_group("model.layers.3.post_attention_layernorm.weight") == "norms"
    assert module_group("model.embed_tokens.weight") == "embeddings"
    assert module_group("lm_head.weight") == "embeddings"
    assert module_group("model.norm.weight") == "norms"
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("model.embed_tokens.weight") is None


def test_added_vocabulary_rows_are_reported_separately() -> None:
    """A parent with extra token rows is compared on the shared rows; the extra rows are counted."""
    generator = torch.Generator().manual_seed(0)
    base = {"model.embed_tokens.weight": torch.randn(10, 4, generator=generator)}
    a = {"model.embed_tokens.weight": base["model.embed_tokens.weight"] + 0.1}
    extra = torch.randn(3, 4, generator=generator)
    b = {"model.embed_tokens.weight": torch.cat([base["model.embed_tokens.weight"] - 0.1, extra])}
    report = diagnose_models(base, a, b, density=1.0, names=("base", "cpt", "chat"))
    assert report.added_tokens == {"chat": 3}
    assert report.summary.parameters == 40
    assert report.summary.task_vector_cosine == pytest.approx(-1.0)


def test_rows_for_every_layer_of_the_tiny_family(tiny_family: dict[str, Path]) -> None:
    """One row per (layer, group) for both layers plus embeddings and the final norm; sums add up."""
    merger = LiveMerger([tiny_family["cpt"], tiny_family["chat"]], base_model=tiny_family["base"])
    report = diagnose(merger, density=0.5)
    cells = {(r.layer, r.group) for r in report.rows}
    for layer in (0, 1):
        assert {(layer, "attention"), (layer, "mlp"), (layer, "norms")} <= cells
    assert {(None, "embeddings"), (None, "norms")} <= cells
    base_tensors = merger.held_tensors(tiny_family["base"].resolve())
    assert report.summary.tensors == len(base_tensors) == sum(r.tensors for r in report.rows)
    assert report.summary.parameters == sum(t.numel() for t in base_tensors.values())
    assert sum(g.parameters for g in report.groups) == report.summary.parameters
    for r in report.rows:
        assert r.task_vector_norm_a > 0 and r.task_vector_norm_b > 0
        assert -1 <= r.task_vector_cosine <= 1 and 0 < r.parent_cosine <= 1
        assert 0 <= r.sign_conflict_fraction <= 1 and 0 <= r.election_dropped_fraction <= 1
    # fine-tunes of one base: the parents are far more collinear than their task vectors
    assert report.summary.parent_cosine > abs(report.summary.task_vector_cosine)
    records = report.records()
    assert (
        len(records) == len(report.rows)
        and {"layer", "group", "parent_cosine"} <= records[0].keys()
    )


def test_diagnose_needs_a_base_and_two_parents(tiny_family: dict[str, Path]) -> None:
    with pytest.raises(CompatibilityError, match="base model"):
        diagnose(LiveMerger([tiny_family["cpt"], tiny_family["chat"]]))
    with pytest.raises(CompatibilityError, match="two parents"):
        diagnose(LiveMerger([tiny_family["cpt"]], base_model=tiny_family["base"]))
