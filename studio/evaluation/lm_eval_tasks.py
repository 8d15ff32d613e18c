"""The studio's task files as lm-eval-harness task YAMLs: one source for the parity checks.

The scorer follows lm-eval's conventions (studio.evaluation.scoring); these YAMLs let lm-eval
read the same local files so tests/test_lm_eval_parity.py and benchmarks/score.py compare the
two on identical items. lm-eval reads them offline (`dataset_path: json`) from a folder passed
as `TaskManager(include_defaults=False, include_path=folder)`. The studio never imports lm-eval.

    write_lm_eval_task(folder / "tasks", "my_mc", mc_jsonl)            # studio MC layout
    write_lm_eval_task(folder / "tasks", "my_ppl", corpus_jsonl, kind="perplexity")

Tests: `.venv/bin/python -m pytest -q tests/test_lm_eval_parity.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

# The studio MC layout (question, options, answer) with the studio's query template:
# "Question: {question}\nAnswer:" + " {option}" (TARGET_DELIMITER), few-shot = first_n.
_MULTIPLE_CHOICE = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
fewshot_split: test
fewshot_config:
  sampler: first_n
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: options
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""

# A {"text"} corpus scored as lm-eval's rolling log-likelihood (the studio's text format).
_PERPLEXITY = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""


def lm_eval_task_yaml(
    name: str, path: str | Path, *, kind: Literal["multiple_choice", "perplexity"]
) -> str:
    """The YAML of lm-eval task `name` reading the JSONL at `path` (studio MC or text layout)."""
    template = _MULTIPLE_CHOICE if kind == "multiple_choice" else _PERPLEXITY
    return template.format(name=name, path=Path(path).resolve())


def write_lm_eval_task(
    folder: Path,
    name: str,
    path: str | Path,
    *,
    kind: Literal["multiple_choice", "perplexity"] = "multiple_choice",
) -> Path:
    """Write `folder/{name}.yaml` (creating the folder); returns the YAML file."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.yaml"
    out.write_text(lm_eval_task_yaml(name, path, kind=kind), encoding="utf-8")
    return out
