"""Inspect a model folder: its structure from headers, its values checked once for NaN/Inf.

The structure comes from `config.json`, the tokenizer files and the safetensors headers (an
8-byte little-endian length, then that many bytes of JSON naming every tensor's dtype, shape and
byte range). The only pass over the weights is a bit test for NaN/Inf, memory-mapped and cached
per file version, so a second inspection reads a few kilobytes, not 14 GB:

    info = inspect_model("/data/models/meditron-7b")
    info.num_layers, info.vocab_size, info.tied_embeddings, info.tensor_shapes["lm_head.weight"]

Errors a user can fix (missing folder, malformed config, unsafe pickle weights, code that would
run on load, a truncated download, NaN/Inf weights, a folder outside the studio's roots) raise
`ModelError` / `PathNotAllowedError` with a sentence that says what to do.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from studio.confine import check_path_text, confine_path
from studio.errors import ModelError
from studio.settings import StudioSettings, load_settings

LOG = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# A real header is a few hundred KB even for 100B models; anything larger is corruption, and
# refusing it early stops a bad file from making us allocate gigabytes.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype codes -> torch dtype names, as the studio shows them.
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}

# Config keys differ across families (GPT-2 says n_layer, T5 d_model); first match wins.
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


class FileInfo(BaseModel, frozen=True):
    """One file of a model folder."""

    name: str
    size_bytes: int


class ModelInfo(BaseModel, frozen=True):
    """What a model folder holds, read from its config and headers (weights only bit-tested)."""

    path: str
    name: str
    architecture: str
    model_type: str
    num_parameters: int
    dtype: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    tokenizer_vocab_size: int | None
    tied_embeddings: bool
    has_chat_template: bool
    weight_format: Literal["safetensors", "pickle"]
    quantization: str | None
    needs_remote_code: bool
    files: tuple[FileInfo, ...]
    tensor_shapes: dict[str, tuple[int, ...]]


# --------------------------------------------------------------------------- paths


def resolve_model_path(ref: str | Path) -> Path:
    """An absolute model folder for `ref` ("~" expanded, relative taken against the cwd).

    mergekit and transformers read a relative path that is not `./x` as a Hub id, so every
    path the studio hands on is absolute.
    """
    text = str(ref).strip()
    if not text:
        raise ModelError("no model given: choose a model from the catalog or give its folder")
    path = Path(text).expanduser()
    # abspath, not resolve(): a symlinked model folder keeps the name the user gave it
    absolute = Path(os.path.abspath(path))
    if not absolute.exists():
        hint = ""
        if not path.is_absolute() and _looks_like_hub_id(text):
            hint = f" (to download '{text}' from the Hugging Face Hub, add it as a Hub id)"
        raise ModelError(f"model folder {absolute} does not exist{hint}")
    if absolute.is_file():
        if absolute.suffix.lower() == ".gguf":
            raise ModelError(
                f"{absolute} is a GGUF file, not a model folder: import it first "
                "(Import GGUF, or `python -m studio add --gguf FILE`)"
            )
        raise ModelError(
            f"{absolute} is a file, not a model folder: give the folder that holds config.json"
        )
    return absolute


def confined_model_path(ref: str | Path, *, settings: StudioSettings) -> Path:
    """resolve_model_path, refusing a folder outside the studio's roots (studio.confine).

    The root check comes first for anything that names a place on disk, so a refusal does not
    reveal whether a folder outside the roots exists.
    """
    text = os.path.expanduser(check_path_text(str(ref), what="model folder"))
    if os.path.isabs(text) or os.path.exists(text):
        confine_path(text, settings=settings, what="model folder")
    return resolve_model_path(ref)


def _looks_like_hub_id(text: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None


# --------------------------------------------------------------------------- inspect


def inspect_model(ref: str | Path, *, settings: StudioSettings | None = None) -> ModelInfo:
    """Describe the model folder `ref`; ModelError with the fix if the studio cannot use it."""
    settings = settings or load_settings()
    folder = confined_model_path(ref, settings=settings)
    # 1) config: architecture and sizes, and the safety gates (remote code) it implies
    config = read_config(folder)
    architecture = _architecture(folder, config, settings=settings)
    # 2) weights: shapes and dtypes from headers only; pickle only when allowed
    weight_format, tensors = _read_weight_headers(folder, settings=settings)
    shapes = {name: shape for name, (_, shape) in tensors.items()}
    tied = _tied_embeddings(config, shapes)
    # 3) sizes: prefer what the config says, fall back to what the tensors show
    text_config = _text_config(config)
    embedding = _embedding_shape(shapes)
    return ModelInfo(
        path=str(folder),
        name=folder.name,
        architecture=architecture,
        model_type=str(config.get("model_type") or text_config.get("model_type") or "unknown"),
        num_parameters=_count_parameters(shapes, tied=tied),
        dtype=_overall_dtype(dtype for dtype, _ in tensors.values()),
        num_layers=_config_int(text_config, LAYER_KEYS) or _count_layers(shapes),
        hidden_size=_config_int(text_config, HIDDEN_KEYS) or (embedding[1] if embedding else 0),
        vocab_size=_config_int(text_config, ("vocab_size",)) or (embedding[0] if embedding else 0),
        tokenizer_vocab_size=tokenizer_vocab_size(folder),
        tied_embeddings=tied,
        has_chat_template=has_chat_template(folder),
        weight_format=weight_format,
        quantization=_quantization(config),
        needs_remote_code="auto_map" in config,
        files=_list_files(folder),
        tensor_shapes=shapes,
    )


def read_config(folder: Path) -> dict[str, Any]:
    """config.json as a dict; ModelError if missing or not JSON (with the line to fix)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelError(
            f"model folder {folder} has no config.json; is it a Hugging Face model folder? "
            "(a GGUF file must be imported first)"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(
            f"config.json in {folder} is not valid JSON (line {error.lineno}, column "
            f"{error.colno}: {error.msg}); fix that line or re-download the model"
        ) from error
    if not isinstance(config, dict):
        raise ModelError(
            f"config.json in {folder} must hold a JSON object, not {type(config).__name__}"
        )
    return config


def _architecture(folder: Path, config: dict[str, Any], *, settings: StudioSettings) -> str:
    """The single architecture name; refuses what transformers/mergekit cannot handle."""
    if "auto_map" in config and not settings.trust_remote_code:
        raise ModelError(
            f"model folder {folder} needs trust_remote_code (config.json has auto_map: loading it "
            "runs Python code shipped with the model); if you trust its source, set "
            "STUDIO_TRUST_REMOTE_CODE=1"
        )
    names = config.get("architectures") or []
    if not isinstance(names, list) or not names:
        raise ModelError(
            f"config.json in {folder} names no architecture ('architectures' is missing); "
            'transformers and mergekit need it, e.g. "architectures": ["LlamaForCausalLM"]'
        )
    if len(names) != 1:
        raise ModelError(
            f"config.json in {folder} lists {len(names)} architectures ({', '.join(map(str, names))}); "
            "mergekit needs exactly one: keep the causal-LM one"
        )
    name = str(names[0])
    if "auto_map" in config:
        return name  # the class comes with the model's own code (trusted above)
    if name not in causal_lm_architectures():
        mergekit_note = (
            "mergekit knows it, but "
            if name in mergekit_architectures()
            else "mergekit has no definition for it and "
        )
        raise ModelError(
            f"model folder {folder} has architecture '{name}', which the studio cannot use: "
            f"{mergekit_note}transformers cannot load it as a causal language model "
            "(it is not in AutoModelForCausalLM); the studio merges, chats with and scores "
            "causal LMs such as LlamaForCausalLM"
        )
    return name


@functools.cache
def causal_lm_architectures() -> frozenset[str]:
    """Class names transformers' AutoModelForCausalLM can build (imported lazily: ~3 s)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return frozenset(names)


@functools.cache
def mergekit_architectures() -> frozenset[str]:
    """Architectures mergekit has a built-in weight layout for.

    Others still merge: mergekit then infers the layout from the checkpoint's tensor names
    (`mergekit.architecture.auto.infer_architecture_info`), which is less tested.
    """
    from mergekit.architecture import AfmoeModuleArchitecture, Glm4MoeModuleArchitecture
    from mergekit.architecture.json_definitions import NAME_TO_ARCH

    special = {
        AfmoeModuleArchitecture.ARCHITECTURE_NAME,
        Glm4MoeModuleArchitecture.ARCHITECTURE_NAME,
    }
    return frozenset(NAME_TO_ARCH) | special


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs nest the language model's sizes under text_config."""
    nested = config.get("text_config")
    if isinstance(nested, dict) and not any(k in config for k in LAYER_KEYS):
        return {**config, **nested}
    return config


def _config_int(config: dict[str, Any], keys: Iterable[str]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _quantization(config: dict[str, Any]) -> str | None:
    quant = config.get("quantization_config")
    if not quant:
        return None
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    return str(method or "unknown")


# --------------------------------------------------------------------------- weights

TensorHeader = tuple[str, tuple[int, ...]]  # (dtype name, shape)


def _read_weight_headers(
    folder: Path, *, settings: StudioSettings
) -> tuple[Literal["safetensors", "pickle"], dict[str, TensorHeader]]:
    shards = safetensors_files(folder)
    if shards:
        tensors: dict[str, TensorHeader] = {}
        for shard in shards:
            tensors.update(read_safetensors_header(shard))
        for shard in shards:  # after every header checked out: the values themselves
            _refuse_non_finite(shard)
        return "safetensors", tensors
    pickles = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise ModelError(
            f"model folder {folder} has no weights (no .safetensors or .bin files); "
            "copy or download the weight files into it"
        )
    if not settings.allow_pickle:
        names = ", ".join(p.name for p in pickles[:3]) + (", ..." if len(pickles) > 3 else "")
        raise ModelError(
            f"model folder {folder} has only pickle weights ({names}); pickle can run code when "
            "loaded: convert to safetensors, or set STUDIO_ALLOW_PICKLE=1"
        )
    tensors = {}
    for path in pickles:
        tensors.update(_read_pickle_shapes(path))
    return "pickle", tensors


def safetensors_files(folder: Path) -> list[Path]:
    """The weight shards: those the index names, else model.safetensors, else every *.safetensors."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ModelError(
                f"{index} is not a valid safetensors index (needs a JSON 'weight_map'); "
                "re-download it or remove it if the folder has a single model.safetensors"
            ) from error
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise ModelError(
                f"model folder {folder} is incomplete: its index lists {missing[0]}, which is "
                "missing; finish the download or copy"
            )
        return shards
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def read_safetensors_header(path: Path) -> dict[str, TensorHeader]:
    """{tensor: (dtype, shape)} from one safetensors file's header, checking it fits the file."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _corrupt(path, f"the file is {size} bytes, shorter than a header")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise _corrupt(path, f"the header claims {length} bytes but the file has {size}")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _corrupt(path, "its header is not valid JSON") from error
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    data_bytes = size - 8 - length
    tensors: dict[str, TensorHeader] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(d) for d in shape)
        except (KeyError, TypeError, ValueError) as error:
            raise _corrupt(path, f"the header entry for {name} is malformed") from error
        if end > data_bytes or start > end:
            raise _corrupt(
                path, f"tensor {name} ends at byte {end} but the file holds {data_bytes} data bytes"
            )
        tensors[name] = (SAFETENSORS_DTYPES.get(str(dtype), str(dtype).lower()), shape)
    return tensors


def _refuse_non_finite(shard: Path) -> None:
    """ModelError naming the first tensor of `shard` that holds NaN or Inf values.

    A NaN in one parent spreads into every merged tensor it touches (and into a sweep's whole
    curve), and nothing in a header shows it, so the values are read once per file version
    (path, size, mtime; cached, so inspecting again is free).
    """
    stat = shard.stat()
    found = non_finite_tensor(str(shard), stat.st_size, stat.st_mtime_ns)
    if found is not None:
        name, nans, infs = found
        raise ModelError(
            f"safetensors file {shard.name} in {shard.parent} holds non-finite weights (tensor "
            f"{name}: {nans} NaN and {infs} Inf values); merging, chatting or scoring with it "
            "would spread them: re-download the model or use an earlier checkpoint"
        )


# safetensors float dtype -> (unsigned view, exponent mask, mantissa mask): an IEEE value is
# NaN or Inf exactly when all its exponent bits are set (NaN: with a non-zero mantissa). Testing
# the bits of the raw little-endian bytes is ~10x faster than torch.isfinite on bf16 and needs
# no torch at all.
_FLOAT_BITS: dict[str, tuple[str, int, int]] = {
    "F16": ("<u2", 0x7C00, 0x03FF),
    "BF16": ("<u2", 0x7F80, 0x007F),
    "F32": ("<u4", 0x7F800000, 0x007FFFFF),
    "F64": ("<u8", 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
}
_SCAN_CHUNK = 1 << 24  # elements per step: bounds the temporary arrays to ~16 MB


@functools.lru_cache(maxsize=256)
def non_finite_tensor(path: str, size: int, mtime_ns: int) -> tuple[str, int, int] | None:
    """(tensor, NaN count, Inf count) for the first float tensor with NaN/Inf, else None.

    Reads the file memory-mapped, tensor by tensor, in bounded chunks. `size` and `mtime_ns`
    are only the cache key: a file rewritten in place is read again. Call after
    read_safetensors_header has checked the header fits the file.
    """
    import numpy as np

    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length).decode("utf-8"))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + length)
    for name, entry in header.items():
        bits = _FLOAT_BITS.get(str(entry.get("dtype"))) if name != "__metadata__" else None
        if bits is None:
            continue
        view, exponent, mantissa = bits
        start, end = entry["data_offsets"]
        values = data[start:end].view(view)
        nans = infs = 0
        for first in range(0, values.size, _SCAN_CHUNK):
            chunk = values[first : first + _SCAN_CHUNK]
            special = (chunk & exponent) == exponent
            if special.any():
                nan = (chunk[special] & mantissa) != 0
                nans += int(nan.sum())
                infs += int((~nan).sum())
        if nans or infs:
            return name, nans, infs
    return None


def _corrupt(path: Path, reason: str) -> ModelError:
    return ModelError(
        f"safetensors file {path.name} in {path.parent} is truncated or corrupt ({reason}); "
        "re-download or re-save it"
    )


def _read_pickle_shapes(path: Path) -> dict[str, TensorHeader]:
    """Shapes from a pickle checkpoint (only with STUDIO_ALLOW_PICKLE=1).

    `weights_only=True` refuses arbitrary objects and `mmap=True` maps the data instead of
    reading it, so this still reads little more than the pickle's index.
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean "unreadable"
        raise ModelError(
            f"pickle checkpoint {path} cannot be read safely ({error}); convert it to safetensors"
        ) from error
    if not isinstance(state, dict):
        raise ModelError(
            f"pickle checkpoint {path} does not hold a state dict; convert it to safetensors"
        )
    return {
        str(name): (str(t.dtype).removeprefix("torch."), tuple(t.shape))
        for name, t in state.items()
        if isinstance(t, torch.Tensor)
    }


def _embedding_shape(shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    for name, shape in shapes.items():
        if (
            name.endswith(("embed_tokens.weight", "wte.weight", "word_embeddings.weight"))
            and len(shape) == 2
        ):
            return shape
    return None


def _output_embedding_name(shapes: dict[str, tuple[int, ...]]) -> str | None:
    return next((n for n in shapes if n == "lm_head.weight" or n.endswith(".lm_head.weight")), None)


def _tied_embeddings(config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> bool:
    """Tied if the config says so, or if there is an input embedding and no output layer."""
    flag = config.get("tie_word_embeddings")
    if flag is None and isinstance(config.get("text_config"), dict):
        flag = config["text_config"].get("tie_word_embeddings")
    if flag is not None:
        return bool(flag)
    return _embedding_shape(shapes) is not None and _output_embedding_name(shapes) is None


def _count_parameters(shapes: dict[str, tuple[int, ...]], *, tied: bool) -> int:
    """Sum of numels; a tied output layer stored next to its embedding is counted once."""
    total = sum(_numel(shape) for shape in shapes.values())
    output = _output_embedding_name(shapes)
    if tied and output is not None and shapes[output] == _embedding_shape(shapes):
        total -= _numel(shapes[output])
    return total


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _count_layers(shapes: dict[str, tuple[int, ...]]) -> int:
    indices = [int(m.group(1)) for name in shapes if (m := _LAYER_INDEX.search(name))]
    return max(indices) + 1 if indices else 0


def _overall_dtype(dtypes: Iterable[str]) -> str:
    distinct = sorted(set(dtypes))
    if not distinct:
        return "unknown"
    return distinct[0] if len(distinct) == 1 else "mixed"


# --------------------------------------------------------------------------- tokenizer, files


def tokenizer_vocab_size(folder: Path) -> int | None:
    """Token count of tokenizer.json (vocabulary plus added tokens), or None without one."""
    ids = tokenizer_vocab(folder)
    return len(set(ids.values())) if ids is not None else None


def tokenizer_vocab(folder: Path) -> dict[str, int] | None:
    """token -> id from tokenizer.json (vocabulary and added tokens); None if absent/unreadable."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        LOG.warning("tokenizer.json in %s is not valid JSON; its size is unknown", folder)
        return None
    vocab = (data.get("model") or {}).get("vocab") or {}
    ids: dict[str, int] = {}
    if isinstance(vocab, dict):  # BPE, WordLevel, WordPiece
        ids.update({str(k): int(v) for k, v in vocab.items()})
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], the id is the position
        ids.update({str(entry[0]): index for index, entry in enumerate(vocab)})
    for token in data.get("added_tokens") or []:
        ids[str(token["content"])] = int(token["id"])
    return ids


def has_chat_template(folder: Path) -> bool:
    """chat_template.jinja (transformers 5), chat_template.json, or one in tokenizer_config.json."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return False
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _list_files(folder: Path) -> tuple[FileInfo, ...]:
    """Top-level files (hidden markers excluded), by name."""
    return tuple(
        FileInfo(name=p.name, size_bytes=p.stat().st_size)
        for p in sorted(folder.iterdir(), key=lambda p: p.name)
        if p.is_file() and not p.name.startswith(".")
    )
