"""`python -m studio`: the same core functions as the app, driven in-process through main()."""

from __future__ import annotations

import json
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
