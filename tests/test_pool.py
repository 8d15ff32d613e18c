"""The model pool on real tiny Llamas: reuse, LRU unloading, budget refusals, thread safety.

Each test states the property it checks in its docstring and asserts it exactly.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from studio.errors import ModelError
from studio.inference import ModelPool, ModelSpec, PoolMemoryError
from studio.inference.engine import format_bytes
from studio.inference.transformers_engine import TransformersEngine


@pytest.fixture(scope="module")
def specs(tiny_family: dict[str, Path]) -> dict[str, ModelSpec]:
    return {name: ModelSpec.from_path(path, device="cpu") for name, path in tiny_family.items()}


def _loaded_bytes(spec: ModelSpec) -> int:
    engine = TransformersEngine(spec)
    engine.load()
    size = engine.memory_bytes()
    engine.unload()
    return size


@pytest.fixture(scope="module")
def model_bytes(specs: dict[str, ModelSpec]) -> int:
    """What one tiny model takes once loaded (the three have the same shape)."""
    return _loaded_bytes(specs["base"])


def _pool(budget: int | None) -> ModelPool:
    return ModelPool(budget, engine="transformers")


def test_same_spec_returns_the_same_loaded_engine(specs: dict[str, ModelSpec]) -> None:
    """Asking twice for one model (two columns, two sessions) loads it once and returns the same
    object; a different dtype is a different model."""
    pool = _pool(None)
    first = pool.get(specs["chat"])
    assert pool.get(specs["chat"]) is first and first.is_loaded
    assert (pool.stats().loads, pool.stats().hits) == (1, 1)
    bf16 = pool.get(specs["chat"].model_copy(update={"dtype": "bfloat16"}))
    assert bf16 is not first and pool.stats().loads == 2
    pool.clear()
    assert not first.is_loaded and pool.entries() == []


def test_least_recently_used_model_is_unloaded_first(
    specs: dict[str, ModelSpec], model_bytes: int
) -> None:
    """With room for two models: load base, cpt, use base again, load chat -> cpt (the least
    recently used) is unloaded; then load cpt -> base is unloaded (chat was used after it)."""
    pool = _pool(2 * model_bytes + model_bytes // 2)
    base = pool.get(specs["base"])
    cpt = pool.get(specs["cpt"])
    pool.get(specs["base"])
    chat = pool.get(specs["chat"])
    assert (base.is_loaded, cpt.is_loaded, chat.is_loaded) == (True, False, True)
    assert [e.spec.name for e in pool.entries()] == ["chat", "base"]  # most recent first
    cpt_again = pool.get(specs["cpt"])
    assert cpt_again is not cpt and cpt_again.is_loaded and not base.is_loaded
    assert [e.spec.name for e in pool.entries()] == ["cpt", "chat"]
    stats = pool.stats()
    assert (stats.loads, stats.unloads, stats.used_bytes) == (4, 2, 2 * model_bytes)
    pool.clear()


def test_a_model_larger_than_the_budget_is_refused_with_the_numbers(
    specs: dict[str, ModelSpec],
) -> None:
    """A model whose estimate exceeds the whole budget is refused before loading, with a
    sentence giving both sizes and the fixes."""
    need = TransformersEngine(specs["base"]).estimate_memory_bytes()
    budget = need // 2
    pool = _pool(budget)
    with pytest.raises(PoolMemoryError) as refused:
        pool.get(specs["base"])
    assert str(refused.value) == (
        f"model 'base' needs about {format_bytes(need)} in its stored dtype but the model memory budget is "
        f"{format_bytes(budget)}; choose dtype bfloat16 or a smaller model, or raise STUDIO_POOL_BUDGET_GB"
    )
    assert format_bytes(need) == "94.9 KB" and format_bytes(budget) == "47.4 KB"
    assert pool.entries() == [] and pool.stats().loads == 0


def test_leased_models_are_never_unloaded(specs: dict[str, ModelSpec], model_bytes: int) -> None:
    """While two leases hold the pool's whole budget, a third model is refused with the models
    in use named; once a lease ends, that model is the one unloaded to make room."""
    pool = _pool(2 * model_bytes + model_bytes // 2)
    need = TransformersEngine(specs["chat"]).estimate_memory_bytes()
    with pool.lease(specs["base"]) as base, pool.lease(specs["cpt"]):
        with pytest.raises(PoolMemoryError) as refused:
            pool.get(specs["chat"])
        assert str(refused.value) == (
            f"model 'chat' needs about {format_bytes(need)} but models in use ('base', 'cpt') hold "
            f"{format_bytes(2 * model_bytes)} of the {format_bytes(pool.budget_bytes or 0)} budget; "
            "wait for their replies to finish or raise STUDIO_POOL_BUDGET_GB"
        )
        assert base.is_loaded
    with pool.lease(specs["cpt"]):
        pool.get(specs["chat"])  # base is idle now, and least recently used
        assert not base.is_loaded
    assert [e.spec.name for e in pool.entries()] == ["chat", "cpt"]
    pool.clear()


def test_concurrent_gets_load_once(specs: dict[str, ModelSpec]) -> None:
    """Eight threads asking for one model at the same moment get the same engine; the model is
    loaded exactly once (the others wait for that load and count as hits)."""
    pool = _pool(None)
    barrier = threading.Barrier(8)
    got: list[object] = [None] * 8

    def ask(i: int) -> None:
        barrier.wait()
        got[i] = pool.get(specs["chat"])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(engine is got[0] for engine in got) and got[0] is not None
    assert (pool.stats().loads, pool.stats().hits) == (1, 7)
    pool.clear()


def test_a_failed_load_leaves_nothing_behind(tmp_path: Path, tiny_family: dict[str, Path]) -> None:
    """A folder without weights fails to load with a ModelError, and the pool holds no
    reservation for it afterwards."""
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(json.loads((tiny_family["base"] / "config.json").read_text()))
    )
    pool = _pool(None)
    with pytest.raises(ModelError, match="has no .safetensors weights"):
        pool.get(ModelSpec.from_path(folder))
    assert pool.entries() == [] and pool.stats().used_bytes == 0
