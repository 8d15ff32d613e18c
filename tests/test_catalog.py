"""The catalog on real tiny models: inspect (headers only), compatibility, registry, Hub (mocked).

Variants of the tiny family (more layers, another size, a padded vocab, tied embeddings) are
built once per module with pipelines.tiny_models and the family's own tokenizer.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import shutil
import sqlite3
import struct
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast

from pipelines.tiny_models import CHATML_TEMPLATE, TinyShape, build_tiny_llama
from studio.catalog import (
    CompatibilityReport,
    ModelInfo,
    add_hub_model,
    add_local_model,
    check_compatibility,
    find_model,
    inspect_model,
    list_models,
    remove_local_model,
    resolve_model_path,
)
from studio.errors import CompatibilityError, ModelError
from studio.settings import StudioSettings, load_settings

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def variants(
    tiny_family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Tiny Llamas that differ from the family in one way each (same tokenizer)."""
    out = tmp_path_factory.mktemp("variants")
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_family["base"])
    shapes = {
        "layers3": TinyShape(num_hidden_layers=3),
        "wide_mlp": TinyShape(intermediate_size=128),
        "hidden64": TinyShape(hidden_size=64),
        "tied": TinyShape(tie_word_embeddings=True),
    }
    built = {name: build_tiny_llama(out / name, tok, shape=shape) for name, shape in shapes.items()}
    built["padded"] = build_tiny_llama(
        out / "padded", tok, vocab_size=len(tok) + 7, chat_template=CHATML_TEMPLATE
    )
    return built


@pytest.fixture
def settings() -> StudioSettings:
    return load_settings()


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def header_shapes(folder: Path) -> dict[str, int]:
    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        return {name: handle.get_slice(name).get_shape() for name in handle.keys()}  # type: ignore[misc]


def numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


# --------------------------------------------------------------------------- inspect


def test_inspect_reports_the_tiny_family_exactly(tiny_family: dict[str, Path]) -> None:
    """Sizes come from config + headers and equal what the files and the tokenizer say."""
    info = inspect_model(tiny_family["chat"])
    shapes = header_shapes(tiny_family["chat"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_family["chat"])
    assert info.path == str(tiny_family["chat"].resolve())
    assert info.name == "chat"
    assert (info.architecture, info.model_type) == ("LlamaForCausalLM", "llama")
    assert (info.num_layers, info.hidden_size) == (2, 32)
    assert info.vocab_size == len(tokenizer) == info.tokenizer_vocab_size
    assert info.num_parameters == sum(numel(s) for s in shapes.values())
    assert info.tensor_shapes == {name: tuple(s) for name, s in shapes.items()}
    assert info.dtype == "float32"
    assert info.tied_embeddings is False
    assert info.has_chat_template is True
    assert (info.weight_format, info.quantization, info.needs_remote_code) == (
        "safetensors",
        None,
        False,
    )
    sizes = {f.name: f.size_bytes for f in info.files}
    assert sizes["model.safetensors"] == (tiny_family["chat"] / "model.safetensors").stat().st_size
    assert "config.json" in sizes and "tokenizer.json" in sizes
    assert inspect_model(tiny_family["cpt"]).has_chat_template is False


def test_inspect_counts_tied_embeddings_once(variants: dict[str, Path], tmp_path: Path) -> None:
    """A tied model's parameter count equals torch's (which counts a shared tensor once)."""
    from transformers import AutoModelForCausalLM

    info = inspect_model(variants["tied"])
    model = AutoModelForCausalLM.from_pretrained(variants["tied"])
    assert info.tied_embeddings is True
    assert "lm_head.weight" not in info.tensor_shapes
    assert info.num_parameters == sum(p.numel() for p in model.parameters())
    # A tied checkpoint that stores the output layer anyway is still counted once.
    both = copy_model(variants["tied"], tmp_path / "tied_both")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(state, str(both / "model.safetensors"), metadata={"format": "pt"})
    assert "lm_head.weight" in inspect_model(both).tensor_shapes
    assert inspect_model(both).num_parameters == info.num_parameters


def test_inspect_reads_sharded_checkpoints(variants: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(variants["wide_mlp"])
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    shutil.copy(variants["wide_mlp"] / "config.json", sharded / "config.json")
    assert (sharded / "model.safetensors.index.json").is_file()
    info = inspect_model(sharded)
    assert info.num_parameters == inspect_model(variants["wide_mlp"]).num_parameters
    assert info.tensor_shapes == inspect_model(variants["wide_mlp"]).tensor_shapes
    # A shard the index names but the folder lacks is an incomplete download.
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    missing = sorted(set(index["weight_map"].values()))[-1]
    (sharded / missing).unlink()
    with pytest.raises(ModelError, match=f"its index lists {missing}, which is missing"):
        inspect_model(sharded)


def test_relative_paths_resolve_to_absolute(
    tiny_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tiny_family["base"].parent)
    assert resolve_model_path("base") == tiny_family["base"].resolve()
    assert inspect_model("./cpt").path == str(tiny_family["cpt"].resolve())


def test_inspect_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"model folder {tmp_path / 'nope'} does not exist"):
        inspect_model(tmp_path / "nope")


def test_inspect_hub_id_like_path_hints_at_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ModelError, match="does not exist .to download 'org/model' from the Hugging Face Hub"
    ):
        inspect_model("org/model")


def test_inspect_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    with pytest.raises(ModelError, match="has no config.json; is it a Hugging Face model folder?"):
        inspect_model(tmp_path / "weights")


def test_inspect_gguf_file_says_import_it(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="is a GGUF file, not a model folder: import it first"):
        inspect_model(tmp_path / "m.gguf")


def test_inspect_config_not_json_names_the_line(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    bad = copy_model(tiny_family["base"], tmp_path / "bad")
    (bad / "config.json").write_text(
        '{\n  "model_type": "llama",\n  "hidden_size": 32\n  "x": 1\n}'
    )
    with pytest.raises(ModelError, match=r"config.json in .* is not valid JSON \(line 4, column 3"):
        inspect_model(bad)


def test_inspect_unknown_architecture(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    odd = copy_model(tiny_family["base"], tmp_path / "odd")
    edit_config(odd, architectures=["FooForCausalLM"])
    with pytest.raises(
        ModelError,
        match="architecture 'FooForCausalLM', which the studio cannot use: mergekit has no "
        "definition for it and transformers cannot load it as a causal language model",
    ):
        inspect_model(odd)
    # mergekit knows BERT, but it is not a causal LM: the message says which side refuses.
    edit_config(odd, architectures=["BertForMaskedLM"])
    with pytest.raises(ModelError, match="mergekit knows it, but transformers cannot load it"):
        inspect_model(odd)
    edit_config(odd, architectures=[])
    with pytest.raises(ModelError, match="names no architecture"):
        inspect_model(odd)
    edit_config(odd, architectures=["LlamaForCausalLM", "LlamaModel"])
    with pytest.raises(ModelError, match="lists 2 architectures .* mergekit needs exactly one"):
        inspect_model(odd)


def test_inspect_pickle_only_refused_unless_allowed(
    tiny_family: dict[str, Path], tmp_path: Path, settings: StudioSettings
) -> None:
    pickled = copy_model(tiny_family["base"], tmp_path / "pickled")
    tensors = {}
    with safe_open(pickled / "model.safetensors", framework="pt") as handle:
        for name in handle.keys():
            tensors[name] = handle.get_tensor(name)
    (pickled / "model.safetensors").unlink()
    torch.save(tensors, pickled / "pytorch_model.bin")
    with pytest.raises(
        ModelError,
        match=r"has only pickle weights \(pytorch_model.bin\); pickle can run code when loaded: "
        "convert to safetensors, or set STUDIO_ALLOW_PICKLE=1",
    ):
        inspect_model(pickled, settings=settings)
    allowed = dataclasses.replace(settings, allow_pickle=True)
    info = inspect_model(pickled, settings=allowed)
    assert info.weight_format == "pickle"
    assert info.tensor_shapes == inspect_model(tiny_family["base"]).tensor_shapes
    assert info.num_parameters == inspect_model(tiny_family["base"]).num_parameters
    report = check_compatibility({"cpt": info, "chat": inspect_model(tiny_family["chat"])})
    assert report.ok
    assert any("pickle weights" in note for note in report.notes)


def test_inspect_remote_code_refused_unless_trusted(
    tiny_family: dict[str, Path], tmp_path: Path, settings: StudioSettings
) -> None:
    remote = copy_model(tiny_family["base"], tmp_path / "remote")
    edit_config(remote, auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    with pytest.raises(
        ModelError, match="needs trust_remote_code .*set STUDIO_TRUST_REMOTE_CODE=1"
    ):
        inspect_model(remote, settings=settings)
    info = inspect_model(remote, settings=dataclasses.replace(settings, trust_remote_code=True))
    assert info.needs_remote_code is True


def test_inspect_truncated_and_corrupt_safetensors(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    cut = copy_model(tiny_family["base"], tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ModelError,
        match=r"model.safetensors in .* is truncated or corrupt \(tensor .* ends at byte",
    ):
        inspect_model(cut)
    (cut / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ModelError, match="the header claims 1000000000 bytes"):
        inspect_model(cut)
    (cut / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(ModelError, match="its header is not valid JSON"):
        inspect_model(cut)
    (cut / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(ModelError, match="shorter than a header"):
        inspect_model(cut)


def test_inspect_folder_without_weights(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    empty = copy_model(tiny_family["base"], tmp_path / "empty")
    (empty / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"has no weights \(no .safetensors or .bin files\)"):
        inspect_model(empty)


# --------------------------------------------------------------------------- compatibility


def family_infos(tiny_family: dict[str, Path]) -> dict[str, ModelInfo]:
    return {role: inspect_model(tiny_family[role]) for role in ("cpt", "chat", "base")}


def test_same_family_is_compatible(tiny_family: dict[str, Path]) -> None:
    report = check_compatibility(family_infos(tiny_family), method="ties")
    assert report.ok and report.problems == ()
    assert report.vocab_sizes == {"cpt": 89, "chat": 89, "base": 89}
    assert report.tokenizer_choices == ()
    assert (
        "chat model has a chat template, CPT model and base model have none: the merge will use "
        "the chat model's (chat_template: auto)"
    ) in report.notes
    report.raise_if_blocked()  # no problems: no error


def test_layer_count_mismatch_is_said_in_layers(
    tiny_family: dict[str, Path], variants: dict[str, Path]
) -> None:
    models = {"cpt": inspect_model(tiny_family["cpt"]), "chat": inspect_model(variants["layers3"])}
    report = check_compatibility(models)
    assert not report.ok
    assert report.problems == (
        "CPT model has 2 layers, chat model has 3: models must have the same number of layers to be merged",
    )
    with pytest.raises(CompatibilityError, match="CPT model has 2 layers, chat model has 3"):
        report.raise_if_blocked()


def test_shape_mismatch_names_the_first_differing_tensor(
    tiny_family: dict[str, Path], variants: dict[str, Path]
) -> None:
    models = {
        "base": inspect_model(tiny_family["base"]),
        "cpt": inspect_model(variants["wide_mlp"]),
    }
    report = check_compatibility(models)
    assert report.problems == (
        "tensor model.layers.0.mlp.down_proj.weight has shape (32, 64) in base model but "
        "(32, 128) in CPT model: the models are not the same size",
    )
    models = {"cpt": inspect_model(tiny_family["cpt"]), "chat": inspect_model(variants["hidden64"])}
    (problem,) = check_compatibility(models).problems
    assert problem == (
        "tensor lm_head.weight has shape (89, 32) in CPT model but (89, 64) in chat model "
        "(hidden size 32 vs 64): they are different model sizes"
    )


def test_architecture_mismatch(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    mistral = copy_model(tiny_family["chat"], tmp_path / "mistral")
    edit_config(mistral, architectures=["MistralForCausalLM"], model_type="mistral")
    models = {"cpt": inspect_model(tiny_family["cpt"]), "chat": inspect_model(mistral)}
    assert check_compatibility(models).problems == (
        "the models have different architectures (CPT model is LlamaForCausalLM, chat model is "
        "MistralForCausalLM): they cannot be merged",
    )


def test_vocab_mismatch_offers_choices_and_tokenizer_source_resolves_it(
    tiny_family: dict[str, Path], variants: dict[str, Path]
) -> None:
    cpt, chat = inspect_model(tiny_family["cpt"]), inspect_model(variants["padded"])
    report = check_compatibility({"chat": chat, "cpt": cpt})
    assert report.problems == (
        "chat model has vocab 96, CPT model has 89: choose a tokenizer source: chat, cpt or union",
    )
    assert report.vocab_sizes == {"chat": 96, "cpt": 89}
    assert report.tokenizer_choices == ("chat", "cpt", "union")
    # the padded model's tokenizer is smaller than its embedding: worth a note, not a problem
    assert any("96 embedding rows and 89 tokenizer tokens" in n for n in report.notes)

    three = {"cpt": cpt, "chat": chat, "base": inspect_model(tiny_family["base"])}
    report = check_compatibility(three, method="ties")
    assert report.problems == (
        "vocab sizes differ (CPT model 89, chat model 96, base model 89): choose a tokenizer "
        "source: base, cpt, chat or union",
    )
    for source in ("union", "base", "chat", chat.path):
        resolved = check_compatibility(three, method="ties", tokenizer_source=source)
        assert resolved.ok, (source, resolved.problems)
        assert any(f"tokenizer_source '{source}' resolves it" in n for n in resolved.notes)
        assert resolved.tokenizer_choices == ("base", "cpt", "chat", "union")
    bad = check_compatibility(three, method="ties", tokenizer_source="mine")
    assert bad.problems[0] == (
        "tokenizer_source 'mine' is not one of the choices: base, cpt, chat or union (or one model's folder)"
    )


def test_same_size_different_tokenizers_is_a_vocab_mismatch(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    swapped = copy_model(tiny_family["chat"], tmp_path / "swapped")
    data = json.loads((swapped / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["paris"], vocab["france"] = vocab["france"], vocab["paris"]
    (swapped / "tokenizer.json").write_text(json.dumps(data))
    models = {"cpt": inspect_model(tiny_family["cpt"]), "chat": inspect_model(swapped)}
    report = check_compatibility(models)
    assert report.problems == (
        "the models have the same vocab size (89) but their tokenizers map tokens to different "
        "ids: choose a tokenizer source: cpt, chat or union",
    )
    assert check_compatibility(models, tokenizer_source="cpt").ok


def test_methods_that_need_a_base(tiny_family: dict[str, Path]) -> None:
    infos = family_infos(tiny_family)
    pair = {"cpt": infos["cpt"], "chat": infos["chat"]}
    report = check_compatibility(pair, method="ties")
    assert report.problems == (
        "ties needs a base model (the model the others were fine-tuned from, whose weights it "
        "subtracts to find each model's changes): choose one as 'base'",
    )
    assert check_compatibility(pair, method="linear").ok
    assert check_compatibility(pair, method="slerp", tokenizer_source="base").ok
    slerp = check_compatibility(infos, method="slerp")
    assert slerp.ok
    assert any("slerp takes no separate base model" in n for n in slerp.notes)
    assert any(
        "linear ignores the base model" in n
        for n in check_compatibility(infos, method="linear").notes
    )
    base_source = check_compatibility(pair, method="ties", tokenizer_source="base")
    assert (
        "tokenizer_source 'base' needs a base model: choose one, or another source"
        in base_source.problems
    )


def test_quantized_checkpoint_is_refused(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    quant = copy_model(tiny_family["chat"], tmp_path / "chat-4bit")
    edit_config(quant, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    info = inspect_model(quant)
    assert info.quantization == "bitsandbytes"
    report = check_compatibility({"cpt": inspect_model(tiny_family["cpt"]), "chat": info})
    assert report.problems == (
        "chat model chat-4bit is quantized (bitsandbytes); mergekit merges full-precision weights "
        "only: use the unquantized checkpoint",
    )


def test_tied_embedding_notes(tiny_family: dict[str, Path], variants: dict[str, Path]) -> None:
    tied = inspect_model(variants["tied"])
    both = check_compatibility({"cpt": tied, "chat": tied})
    assert "tied embeddings in all models (the output layer is the embedding matrix)" in both.notes
    mixed = check_compatibility({"cpt": inspect_model(tiny_family["cpt"]), "chat": tied})
    assert mixed.ok  # a tied model's missing lm_head is not a layout problem
    assert (
        "tied embeddings in chat model but not in CPT model: mergekit uses a tied model's "
        "embedding matrix as its output layer"
    ) in mixed.notes


def test_report_is_a_frozen_pydantic_model(tiny_family: dict[str, Path]) -> None:
    report = check_compatibility(family_infos(tiny_family))
    assert CompatibilityReport.model_validate(report.model_dump()) == report
    with pytest.raises(ValueError):
        report.ok = False  # type: ignore[misc]


# --------------------------------------------------------------------------- registry


def test_list_models_covers_every_source(
    tiny_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each folder's source follows from where it is and its marker; .partial folders are skipped."""
    root = tmp_path / "root"
    root.mkdir()
    copy_model(tiny_family["cpt"], root / "shared-cpt")
    (root / "notes").mkdir()  # no config.json: not a model
    monkeypatch.setenv("STUDIO_MODEL_ROOTS", str(root))
    settings = load_settings()
    settings.ensure_dirs()
    models, merges = settings.models_dir, settings.merges_dir
    copy_model(tiny_family["base"], models / "starter-base")
    copy_model(tiny_family["chat"], models / "smollm2")
    (models / "smollm2" / ".gguf_source").write_text("/x/smollm2.gguf\n")
    copy_model(tiny_family["chat"], models / "org--chat")
    (models / "org--chat" / ".hub_id").write_text("org/chat\n")
    copy_model(tiny_family["base"], models / "plain")
    copy_model(tiny_family["base"], models / "half.partial-1234")
    copy_model(tiny_family["base"], models / "starter-zoo.partial")
    copy_model(tiny_family["cpt"], merges / "ties-1")
    copy_model(tiny_family["cpt"], merges / "ties-2.partial-ab12")
    local = copy_model(tiny_family["chat"], tmp_path / "elsewhere" / "my-chat")
    add_local_model(local, settings=settings)

    entries = list_models(settings)
    assert [(e.name, e.source) for e in entries] == [
        ("starter-base", "starter"),
        ("plain", "imported"),
        ("smollm2", "imported"),
        ("org--chat", "hub"),
        ("my-chat", "local"),
        ("ties-1", "merge"),
        ("shared-cpt", "root"),
    ]
    assert all(
        Path(e.path).is_absolute() and Path(e.path, "config.json").is_file() for e in entries
    )
    assert find_model("ties-1", settings=settings).path == str((merges / "ties-1").resolve())


def test_training_checkpoints_are_listed_by_run_and_step(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """STUDIO_HOME/runs/<run>/step-NNNNNNNN folders are "train" entries named <run>/step-N with
    their step; a `.partial` checkpoint and a run file that is not a checkpoint are skipped; a
    registered checkpoint stays "train" (listed once); find_model resolves the names."""
    settings = load_settings()
    settings.ensure_dirs()
    run = settings.runs_dir / "cpt-demo"
    copy_model(tiny_family["base"], run / "step-00000010")
    copy_model(tiny_family["base"], run / "step-00000020")
    copy_model(tiny_family["base"], run / "step-00000030.partial")
    (run / "metrics.jsonl").write_text("")
    (run / "step-00000040").mkdir()  # no config.json (yet): not a model
    copy_model(tiny_family["cpt"], tmp_path / "elsewhere" / "cpt")
    add_local_model(run / "step-00000020", settings=settings)  # registered by an older run
    add_local_model(tmp_path / "elsewhere" / "cpt", settings=settings)

    entries = list_models(settings)
    assert [(e.name, e.source, e.step) for e in entries] == [
        ("cpt", "local", None),
        ("cpt-demo/step-00000010", "train", 10),
        ("cpt-demo/step-00000020", "train", 20),
    ]
    for step in (10, 20):
        entry = find_model(f"cpt-demo/step-{step:08d}", settings=settings)
        assert (entry.source, entry.step) == ("train", step)
        assert entry.path == str((run / f"step-{step:08d}").resolve())
    assert find_model(str(run / "step-00000010"), settings=settings).name == (
        "cpt-demo/step-00000010"
    )


def test_add_local_model_persists_in_sqlite(
    tiny_family: dict[str, Path], studio_home: Path
) -> None:
    entry = add_local_model(tiny_family["cpt"])
    assert (entry.name, entry.source, entry.path) == (
        "cpt",
        "local",
        str(tiny_family["cpt"].resolve()),
    )
    # a fresh settings object (as a new process would read) still sees it
    assert entry in list_models(load_settings())
    rows = (
        sqlite3.connect(studio_home / "studio.sqlite3")
        .execute("SELECT path, name FROM catalog_models")
        .fetchall()
    )
    assert rows == [(entry.path, "cpt")]
    assert add_local_model(tiny_family["cpt"]) == entry  # adding twice keeps one entry
    assert [e for e in list_models() if e.source == "local"] == [entry]
    remove_local_model(entry.path)
    assert list_models() == []
    with pytest.raises(ModelError, match="is not a registered local model"):
        remove_local_model(entry.path)


def test_add_local_model_propagates_inspect_errors(tmp_path: Path, studio_home: Path) -> None:
    (tmp_path / "junk").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        add_local_model(tmp_path / "junk")
    assert list_models() == []


def test_duplicate_names_are_made_unique(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    settings = load_settings()
    settings.ensure_dirs()
    copy_model(tiny_family["base"], settings.merges_dir / "base")
    add_local_model(tiny_family["base"], settings=settings)  # folder also called "base"
    entries = list_models(settings)
    assert [(e.name, e.source) for e in entries] == [("base", "local"), ("base-merge", "merge")]
    assert find_model("base-merge", settings=settings).source == "merge"
    assert find_model(str(tiny_family["base"]), settings=settings).name == "base"


def test_find_model_lists_known_names(tiny_family: dict[str, Path]) -> None:
    add_local_model(tiny_family["chat"])
    with pytest.raises(
        ModelError, match="no model called 'llama-7b' in the catalog; known models: chat"
    ):
        find_model("llama-7b")
    with pytest.raises(ModelError, match="is not in the catalog; add it first"):
        find_model(str(tiny_family["cpt"]))


def test_list_models_on_a_fresh_home_creates_nothing(studio_home: Path) -> None:
    assert list_models() == []
    assert not studio_home.exists()


# --------------------------------------------------------------------------- hub


def test_hub_offline_says_so_plainly(studio_home: Path) -> None:
    with pytest.raises(ModelError) as error:
        add_hub_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert str(error.value) == (
        "Hub downloads are off (HF_HUB_OFFLINE=1): 'HuggingFaceTB/SmolLM2-135M-Instruct' cannot be "
        "fetched. Download it elsewhere and add its folder, or allow the network."
    )
    assert not (studio_home / "models").exists() or not any((studio_home / "models").iterdir())


def online_settings(monkeypatch: pytest.MonkeyPatch) -> StudioSettings:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return load_settings()


def test_hub_invalid_repo_id(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = online_settings(monkeypatch)
    with pytest.raises(ModelError, match="'not a repo!' is not a valid Hugging Face Hub id"):
        add_hub_model("not a repo!", settings=settings)


def fake_snapshot_download(source: Path, calls: list[dict[str, object]]):
    """Stands in for the Hub: copies `source`'s files that match allow_patterns into local_dir."""

    def download(
        repo_id: str, *, revision: str | None, local_dir: Path, allow_patterns: list[str]
    ) -> str:
        calls.append({"repo_id": repo_id, "revision": revision, "local_dir": Path(local_dir)})
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        for file in source.iterdir():
            if any(fnmatch.fnmatch(file.name, p) for p in allow_patterns):
                shutil.copy(file, Path(local_dir) / file.name)
        (Path(local_dir) / ".cache").mkdir(exist_ok=True)  # what huggingface_hub leaves behind
        return str(local_dir)

    return download


def test_hub_download_lands_in_the_models_folder(
    tiny_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = online_settings(monkeypatch)
    source = copy_model(tiny_family["chat"], tmp_path / "remote")
    torch.save({}, source / "pytorch_model.bin")  # never fetched: not in allow_patterns
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download(source, calls))

    entry = add_hub_model("org/tiny-chat", settings=settings, revision="v1")
    target = settings.models_dir / "org--tiny-chat"
    assert (entry.name, entry.source, entry.path) == ("org--tiny-chat", "hub", str(target))
    (call,) = calls
    assert call["repo_id"] == "org/tiny-chat" and call["revision"] == "v1"
    assert call["local_dir"].parent == settings.models_dir  # type: ignore[union-attr]
    assert ".partial" in call["local_dir"].name  # type: ignore[union-attr]
    assert (target / ".hub_id").read_text() == "org/tiny-chat\nv1\n"
    assert not (target / "pytorch_model.bin").exists() and not (target / ".cache").exists()
    assert inspect_model(target).has_chat_template
    assert entry in list_models(settings)
    assert [p.name for p in settings.models_dir.iterdir()] == ["org--tiny-chat"]
    # adding it again is a no-op (no second download)
    assert add_hub_model("org/tiny-chat", settings=settings) == entry
    assert len(calls) == 1


def test_hub_repo_without_safetensors_leaves_nothing(
    tiny_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = online_settings(monkeypatch)
    source = copy_model(tiny_family["chat"], tmp_path / "remote")
    (source / "model.safetensors").unlink()
    torch.save({}, source / "pytorch_model.bin")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download(source, []))
    with pytest.raises(ModelError, match="'org/old' has no safetensors weights on the Hub"):
        add_hub_model("org/old", settings=settings)
    assert list(settings.models_dir.iterdir()) == []
