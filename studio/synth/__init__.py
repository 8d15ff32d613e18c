"""Synthetic instruction and QA data from a user's domain documents (issue 9). No gradio here.

- config: SynthConfig (typed YAML), the shipped prompt templates (pipelines/synth_templates/);
- items: parsing generator replies, quality filters, the SFT / QA-eval / abstract-eval rows and
  the held-out check;
- jobs: start / status / cancel as a background job (worker: `python -m pipelines.synth`).

Tests: tests/test_synth.py, tests/test_synth_app.py.
"""

from __future__ import annotations

from studio.synth.config import (
    TASK_NAMES,
    FilterSettings,
    SynthConfig,
    SynthError,
    SynthTemplates,
    default_template,
    dump_synth_config,
    load_synth_config,
    parse_synth_config,
)
from studio.synth.items import (
    FILTER_NAMES,
    SET_FILES,
    SET_NAMES,
    Chunk,
    Generation,
    SynthItem,
    SynthSets,
    build_sets,
    check_held_out_absent,
    parse_generation,
)
from studio.synth.jobs import (
    PREVIEW_HEADERS,
    SynthStatus,
    cancel_synth_job,
    default_output_dir,
    start_synth_job,
    synth_status,
)

__all__ = [
    "FILTER_NAMES",
    "PREVIEW_HEADERS",
    "SET_FILES",
    "SET_NAMES",
    "TASK_NAMES",
    "Chunk",
    "FilterSettings",
    "Generation",
    "SynthConfig",
    "SynthError",
    "SynthItem",
    "SynthSets",
    "SynthStatus",
    "SynthTemplates",
    "build_sets",
    "cancel_synth_job",
    "check_held_out_absent",
    "default_output_dir",
    "default_template",
    "dump_synth_config",
    "load_synth_config",
    "parse_generation",
    "parse_synth_config",
    "start_synth_job",
    "synth_status",
]
