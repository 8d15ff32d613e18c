"""House rules that keep the layers apart, checked by parsing every module (no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def imports_gradio(path: Path) -> bool:
    return any(m == "gradio" or m.startswith("gradio.") for m in imported_modules(path))


def test_only_the_ui_imports_gradio() -> None:
    """No module outside app.py and studio/ui/ imports gradio (the core stays scriptable)."""
    ui = ROOT / "studio" / "ui"
    offenders = [
        str(p.relative_to(ROOT))
        for p in python_files("studio", "pipelines")
        if not p.is_relative_to(ui) and imports_gradio(p)
    ]
    assert offenders == []


def test_core_does_not_import_pipelines_or_app() -> None:
    """Imports flow app.py -> studio/ui -> studio core <- pipelines, never back."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in python_files("studio")
        if any(m.split(".")[0] in {"pipelines", "app"} for m in imported_modules(p))
    ]
    assert offenders == []


def test_the_rule_checker_sees_imports(tmp_path: Path) -> None:
    """The parser above really finds both import forms (so the rules cannot pass vacuously)."""
    sample = tmp_path / "m.py"
    sample.write_text("import gradio as gr\nfrom gradio.components import Slider\n")
    assert imported_modules(sample) == {"gradio", "gradio.components"}
    assert imports_gradio(sample)
    assert imports_gradio(ROOT / "studio" / "ui" / "app.py")
    assert len(python_files("studio")) > 5
