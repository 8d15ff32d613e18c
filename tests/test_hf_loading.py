"""Loading models from several threads at once (the Chat tab's three columns) is safe."""

from __future__ import annotations

import threading
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from pipelines.tiny_models import TinyShape, build_tiny_llama
from studio.catalog import import_gguf, inspect_model
from studio.inference import ModelSpec
from studio.inference.transformers_engine import TransformersEngine
from tests.test_gguf_import import write_tiny_gguf


def test_concurrent_loads_do_not_break_later_tied_loads(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """from_pretrained patches torch globals while it runs; unserialised loads in threads once
    left a patch behind, and every later tied model came out untied. After three loads at
    once, a tied GGUF still imports tied."""
    engines = [TransformersEngine(ModelSpec.from_path(tiny_family[r])) for r in tiny_family]
    threads = [threading.Thread(target=e.load) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(e.is_loaded for e in engines)

    tok = PreTrainedTokenizerFast.from_pretrained(tiny_family["base"])
    tied = build_tiny_llama(tmp_path / "tied", tok, shape=TinyShape(tie_word_embeddings=True))
    entry = import_gguf(write_tiny_gguf(tied, tmp_path / "tied.gguf"), dtype="float32")
    assert inspect_model(entry.path).tied_embeddings is True
