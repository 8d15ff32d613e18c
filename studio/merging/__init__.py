"""Merging: export to disk as a background job (export, worker, card) and the live in-memory
re-merge for previews (live, live_plan, fast_methods, live_task_vectors).

from studio.merging import start_merge_job, merge_to_folder
"""

from __future__ import annotations

from studio.merging.export import merge_to_folder, parse_merge_config, start_merge_job

__all__ = ["merge_to_folder", "parse_merge_config", "start_merge_job"]
