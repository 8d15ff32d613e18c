"""The model catalog: add models (folder, Hub id, GGUF), inspect them, check they can be merged.

from studio import catalog
catalog.list_models()                                # what the studio offers
info = catalog.inspect_model("/m/meditron-7b")       # config + headers, no weights read
report = catalog.check_compatibility({"cpt": cpt, "chat": chat, "base": base}, method="ties")
report.raise_if_blocked()
"""

from __future__ import annotations

from studio.catalog.compat import CompatibilityReport, check_compatibility
from studio.catalog.gguf_import import find_smollm2_gguf, import_gguf
from studio.catalog.hub import add_hub_model
from studio.catalog.inspect import FileInfo, ModelInfo, inspect_model, resolve_model_path
from studio.catalog.registry import (
    ModelEntry,
    add_local_model,
    find_model,
    list_models,
    model_folder,
    remove_local_model,
)

__all__ = [
    "CompatibilityReport",
    "FileInfo",
    "ModelEntry",
    "ModelInfo",
    "add_hub_model",
    "add_local_model",
    "check_compatibility",
    "find_model",
    "model_folder",
    "find_smollm2_gguf",
    "import_gguf",
    "inspect_model",
    "list_models",
    "remove_local_model",
    "resolve_model_path",
]
