"""Errors a user can cause and fix. Their message is shown as-is in the UI and the CLI.

Write messages for a domain expert: name the field, the value, and the fix
("slerp needs exactly 2 models; got 3"). Only `studio.ui` turns these into `gr.Error`.
"""

from __future__ import annotations


class StudioError(Exception):
    """A problem the user can fix; str(error) is the sentence to show them."""


class ModelError(StudioError):
    """A model folder, file or id cannot be used (missing, malformed, unsafe format)."""


class CompatibilityError(StudioError):
    """Two or more models cannot be merged as chosen."""


class RecipeError(StudioError):
    """A merge recipe is invalid (unknown method, parameter out of range, wrong model count)."""


class JobError(StudioError):
    """A background job cannot be started, found or cancelled."""
