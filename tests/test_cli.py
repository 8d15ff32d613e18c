"""`python -m studio`: the same core functions as the app, driven in-process through main()."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from studio.__main__ import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_prints_the_model_facts(
    capsys: pytest.CaptureFixture[str], tiny_family: dict[str, Path]
) -> None:
    code, out, _ = run_cli(capsys, "--json", "inspect", str(tiny_family["cpt"]))
    info = json.loads(out)
    assert code == 0
    assert (info["architecture"], info["num_layers"], info["hidden_size"]) == (
        "LlamaForCausalLM",
        2,
        32,
    )
    assert info["path"] == str(tiny_family["cpt"])


def test_check_reports_a_compatible_family(
    capsys: pytest.CaptureFixture[str], tiny_family: dict[str, Path]
) -> None:
    code, out, _ = run_cli(
        capsys,
        "check",
        str(tiny_family["cpt"]),
        str(tiny_family["chat"]),
        "--base",
        str(tiny_family["base"]),
        "--method",
        "ties",
    )
    assert code == 0
    assert out.startswith("compatible")


def test_check_without_base_for_ties_fails_with_a_sentence(
    capsys: pytest.CaptureFixture[str], tiny_family: dict[str, Path]
) -> None:
    code, out, _ = run_cli(
        capsys, "check", str(tiny_family["cpt"]), str(tiny_family["chat"]), "--method", "ties"
    )
    assert code == 1
    assert "NOT compatible" in out and "base" in out


def test_methods_lists_registry_methods(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--json", "methods")
    names = {m["name"] for m in json.loads(out)}
    assert code == 0
    assert {"linear", "slerp", "ties", "dare_ties", "della", "model_stock"} <= names
    code, out, _ = run_cli(capsys, "methods", "ties")
    assert "density" in out and "weight" in out


def test_merge_runs_a_recipe_to_a_folder_and_lists_the_job(
    capsys: pytest.CaptureFixture[str], tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n"
        f"  - model: {tiny_family['cpt']}\n    parameters: {{weight: 0.25}}\n"
        f"  - model: {tiny_family['chat']}\n    parameters: {{weight: 0.75}}\ndtype: float32\n"
    )
    out_dir = tmp_path / "merged"
    code, out, err = run_cli(capsys, "merge", str(recipe), "--out", str(out_dir))
    assert code == 0, err
    assert "succeeded" in out
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file()
    code, out, _ = run_cli(capsys, "--json", "jobs")
    jobs = json.loads(out)
    assert [j["state"] for j in jobs] == ["succeeded"]
    assert jobs[0]["output_path"] == str(out_dir)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "/no/such/model"], "does not exist"),
        (["methods", "frobnicate"], "unknown merge method 'frobnicate'"),
        (["merge", "/no/such/recipe.yml"], "No such file"),
        (["job", "nope"], "no job with id 'nope'"),
    ],
)
def test_user_errors_are_one_sentence_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_merge_refuses_an_existing_output_folder_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {tiny_family['cpt']}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {tiny_family['chat']}\n    parameters: {{weight: 1.0}}\n"
    )
    out_dir = tmp_path / "exists"
    out_dir.mkdir()
    code, _, err = run_cli(capsys, "merge", str(recipe), "--out", str(out_dir))
    assert code == 2 and "already exists" in err
    assert list(out_dir.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "r.yml"]


# -- chat, preview, diagnose ---------------------------------------------------------------------


def test_chat_greedy_prints_what_a_direct_chat_gives(
    capsys: pytest.CaptureFixture[str], tiny_family: dict[str, Path]
) -> None:
    from studio.inference import (
        ChatMessage,
        ModelSpec,
        chat,
        generation_settings,
        get_pool,
    )

    model = str(tiny_family["chat"])
    argv = ["--prompt", "hi", "--system", "be brief", "--template", "chatml"]
    code, out, err = run_cli(capsys, "--json", "chat", model, *argv, "--max-new-tokens", "8")
    assert code == 0, err
    [reply] = json.loads(out)
    messages = [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hi"),
    ]
    settings = generation_settings(temperature=0.0, max_new_tokens=8)
    with get_pool().lease(ModelSpec.from_path(model)) as engine:
        direct = chat(engine, messages, settings, template="chatml")
    assert reply["model"] == model
    assert (reply["text"], reply["stop_reason"], reply["tokens"]) == (
        direct.text,
        direct.stop_reason,
        direct.tokens,
    )
    code, out, _ = run_cli(capsys, "chat", model, *argv, "--max-new-tokens", "8")
    assert code == 0
    assert direct.text in out and f"stopped by {direct.stop_reason}" in out


def test_chat_with_two_models_prints_two_blocks(
    capsys: pytest.CaptureFixture[str], tiny_family: dict[str, Path]
) -> None:
    models = [str(tiny_family["chat"]), str(tiny_family["cpt"])]
    code, out, err = run_cli(
        capsys, "chat", *models, "--prompt", "hi", "--template", "chatml", "--max-new-tokens", "4"
    )
    assert code == 0, err
    assert [line for line in out.splitlines() if line.startswith("== ")] == [
        f"== {m}" for m in models
    ]
    assert out.count("tokens/s") == 2


def _write_recipe(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_preview_prints_finite_perplexities(
    capsys: pytest.CaptureFixture[str], tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = _write_recipe(
        tmp_path / "linear.yml",
        f"merge_method: linear\nmodels:\n"
        f"  - model: {tiny_family['cpt']}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {tiny_family['chat']}\n    parameters: {{weight: 0.5}}\ndtype: float32\n",
    )
    code, out, err = run_cli(capsys, "--json", "preview", str(recipe), "--prompt", "The sun")
    assert code == 0, err
    result = json.loads(out)
    probes = [result["merged"], *result["parents"]]
    assert result["method"] == "linear" and result["prompt"] == "The sun"
    assert len(probes) == 3
    for probe in probes:
        for key in ("domain_perplexity", "general_perplexity"):
            assert probe[key] is not None and math.isfinite(probe[key])
        assert probe["top_tokens"]
    code, out, _ = run_cli(capsys, "preview", str(recipe))
    assert code == 0
    assert out.splitlines()[1].startswith("merged") and "not finite" not in out


def test_diagnose_prints_a_row_for_each_layer(
    capsys: pytest.CaptureFixture[str], tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = _write_recipe(
        tmp_path / "ties.yml",
        f"merge_method: ties\nbase_model: {tiny_family['base']}\nmodels:\n"
        f"  - model: {tiny_family['cpt']}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        f"  - model: {tiny_family['chat']}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        "dtype: float32\n",
    )
    code, out, err = run_cli(capsys, "--json", "diagnose", str(recipe), "--density", "0.5")
    assert code == 0, err
    records = json.loads(out)
    assert {r["layer"] for r in records if r["layer"] is not None} == {0, 1}
    code, out, _ = run_cli(capsys, "diagnose", str(recipe))
    assert code == 0
    layers = {line.split()[0] for line in out.splitlines()[2:] if line.split()[0].isdigit()}
    assert layers == {"0", "1"}
    assert "summary" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chat", "/no/such/model", "--prompt", "hi"], "does not exist"),
        (["chat", "nosuchname", "--prompt", "hi"], "no model called 'nosuchname'"),
        (["preview", "/no/such/recipe.yml"], "No such file"),
        (["diagnose", "/no/such/recipe.yml"], "No such file"),
    ],
)
def test_chat_preview_diagnose_user_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_score_and_sweep_print_tables_and_write_csv(
    capsys: pytest.CaptureFixture[str], tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """score: one row per model; sweep: the weight=0 point equals the first parent's score."""
    task = tmp_path / "mc.jsonl"
    rows = [
        {"question": "the capital of france is", "options": ["paris", "a cat"], "answer": 0},
        {"question": "two plus two is", "options": ["four", "green"], "answer": 0},
    ]
    task.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    code, out, _ = run_cli(
        capsys, "--json", "score", str(tiny_family["cpt"]), "--task", str(task), "--limit", "2"
    )
    assert code == 0
    report = json.loads(out)
    assert [(r["label"], r["n"]) for r in report["rows"]] == [("cpt", 2)]

    recipe = tmp_path / "linear.yml"
    recipe.write_text(
        "merge_method: linear\ndtype: float32\nmodels:\n"
        f"  - model: {tiny_family['cpt']}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {tiny_family['chat']}\n    parameters: {{weight: 0.5}}\n",
        encoding="utf-8",
    )
    out_csv = tmp_path / "sweep.csv"
    code, out, _ = run_cli(
        capsys,
        "sweep",
        str(recipe),
        "--parameter",
        "weight",
        "--values",
        "0,1",
        "--task",
        str(task),
        "--csv",
        str(out_csv),
    )
    assert code == 0
    assert out.splitlines()[0].startswith("model\tweight\t")
    lines = out_csv.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 4  # header + 2 points + 2 parents
    by_label = {line.split(",")[0]: float(line.split(",")[5]) for line in lines[1:]}
    assert by_label["weight=0"] == pytest.approx(by_label["cpt"], abs=1e-5)

    code, _, err = run_cli(capsys, "sweep", str(recipe), "--parameter", "t", "--values", "0.5")
    assert code == 2 and "no parameter 't'" in err
