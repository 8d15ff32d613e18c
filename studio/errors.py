"""Errors a user can cause and fix. Their message is shown as-is in the UI and the CLI.

Write messages for a domain expert: name the field, the value, and the fix
("slerp needs exactly 2 models; got 3"). Only `studio.ui` turns these into `gr.Error`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


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


def first_problem(error: ValidationError) -> str:
    """One sentence from a pydantic error: our validators' message, or field + reason."""
    first = error.errors()[0]
    message = str(first.get("msg", error)).removeprefix("Value error, ")
    if first.get("type") == "value_error":
        return message
    field = ".".join(str(p) for p in first.get("loc", ()))
    return f"{field}: {message} (got {first.get('input')!r})"


def validated(model: type[M], error: type[StudioError], /, **values: Any) -> M:
    """`model(**values)`, or `error` with one sentence naming the bad field."""
    try:
        return model(**values)
    except ValidationError as problem:
        raise error(first_problem(problem)) from problem


class PathNotAllowedError(StudioError):
    """A path lies outside the folders the studio may read or write (studio.confine)."""
