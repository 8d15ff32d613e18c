"""The demo zoo: the shipped models load and fit together; the build script runs end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from pipelines.demo_zoo import ROLES, ZOO_DIR, ZOO_SHAPE, build_demo_zoo
from pipelines.starter_zoo import ensure_starter_zoo
from studio.catalog.compat import check_compatibility
from studio.catalog.inspect import inspect_model
from studio.settings import load_settings

MAX_ZOO_BYTES = 40 * 1024 * 1024


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_shipped_zoo_is_small_and_its_three_models_share_every_shape() -> None:
    sizes = sum(p.stat().st_size for p in ZOO_DIR.rglob("*") if p.is_file())
    assert 0 < sizes <= MAX_ZOO_BYTES
    weights = {role: _weights(ZOO_DIR / role) for role in ROLES}
    shapes = {role: {k: tuple(v.shape) for k, v in w.items()} for role, w in weights.items()}
    assert shapes["base"] == shapes["cpt"] == shapes["chat"]
    config = json.loads((ZOO_DIR / "base" / "config.json").read_text())
    assert config["hidden_size"] == ZOO_SHAPE.hidden_size
    # The children were trained: neither equals the base, and they differ from each other.
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(weights["cpt"][name], weights["base"][name])
    assert not torch.equal(weights["chat"][name], weights["cpt"][name])
    tokenizers = {(ZOO_DIR / r / "tokenizer.json").read_text() for r in ROLES}
    assert len(tokenizers) == 1


def test_the_app_opens_on_the_shipped_zoo() -> None:
    """The starter models the app preselects are the shipped demo zoo, copied on first start."""
    paths = ensure_starter_zoo(load_settings())
    for role in ROLES:
        assert torch.equal(
            _weights(paths[role])["model.norm.weight"],
            _weights(ZOO_DIR / role)["model.norm.weight"],
        )
    infos = {role: inspect_model(paths[role]) for role in ROLES}
    report = check_compatibility(infos, method="ties")
    assert report.ok, report.problems


@pytest.mark.slow
def test_build_script_trains_three_stages_with_the_projects_pipelines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1%-length build: the real pipelines run, each stage starts from the right weights."""
    # The build widens this process's roots (os.environ); monkeypatch puts them back after.
    for variable in ("STUDIO_MODEL_ROOTS", "STUDIO_DATA_ROOTS"):
        monkeypatch.setenv(variable, os.environ.get(variable, ""))
    try:
        zoo = build_demo_zoo(
            out_dir=tmp_path / "zoo", data_dir=tmp_path / "data", work=tmp_path / "work", scale=0.01
        )
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert set(zoo) == set(ROLES)
    for role in ROLES:
        started = json.loads(
            (tmp_path / "work" / role / "metrics.jsonl").read_text().splitlines()[0]
        )
        expected = "init" if role == "base" else "base"
        origin = Path(started["started_from"]).resolve().relative_to((tmp_path / "work").resolve())
        assert origin.parts[0] == expected
        assert not (zoo[role] / "trainer_state").exists()
        assert (zoo[role] / "chat_template.jinja").is_file()
