"""Evaluation: tasks from local files, log-likelihood, perplexity and chat-QA scoring, sweeps.

    from studio.evaluation import load_task, score_task, ScoreSettings
    score = score_task(engine, load_task("/data/arc_easy.jsonl"), ScoreSettings(limit=50))

The sweeps, results cache and scoring jobs live in their own modules (`sweeps`, `results`,
`jobs`) and are imported from there.
"""

from __future__ import annotations

from studio.evaluation.scoring import (
    ItemScore,
    ScoreSettings,
    ScoringCancelled,
    ScoringError,
    TaskScore,
    score_task,
)
from studio.evaluation.tasks import (
    TASK_FORMATS,
    ChoiceItem,
    QAItem,
    Task,
    TaskError,
    TaskKind,
    TextItem,
    demo_task_paths,
    load_task,
    preselected_demo_tasks,
)

__all__ = [
    "TASK_FORMATS",
    "ChoiceItem",
    "ItemScore",
    "QAItem",
    "ScoreSettings",
    "ScoringCancelled",
    "ScoringError",
    "Task",
    "TaskError",
    "TaskKind",
    "TaskScore",
    "TextItem",
    "demo_task_paths",
    "preselected_demo_tasks",
    "load_task",
    "score_task",
]
