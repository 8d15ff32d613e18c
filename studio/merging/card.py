"""The model card (README.md) written next to every exported merge.

mergekit's own card (method, models, the YAML that reproduces the merge) plus a provenance
section: the parents with their roles, the mergekit and studio versions, and the date, so a
merged folder found months later still says how to rebuild it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

from mergekit.card import generate_card
from mergekit.common import ModelReference
from mergekit.config import MergeConfiguration

import studio

LOG = logging.getLogger(__name__)


def mergekit_version() -> str:
    try:
        return version("mergekit")
    except PackageNotFoundError:  # a source checkout without metadata
        return "unknown"


def build_model_card(
    config: MergeConfiguration,
    config_yaml: str,
    *,
    name: str,
    created: datetime | None = None,
) -> str:
    """README.md text for a merge of `config` (written as `config_yaml`) saved as `name`."""
    created = created or datetime.now(UTC)
    card = generate_card(config=config, config_yaml=config_yaml, name=name)
    return card.rstrip("\n") + "\n\n" + _provenance(config, created) + "\n"


def _provenance(config: MergeConfiguration, created: datetime) -> str:
    lines = [
        "## Provenance",
        "",
        f"- made with Merge Studio {studio.__version__} and mergekit {mergekit_version()}",
        f"- date: {created.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- merge method: {config.merge_method}",
        "- parents:",
    ]
    base = config.base_model
    for model in parent_models(config):
        role = " (base model)" if base is not None and model == base else ""
        lines.append(f"  - `{model}`{role}")
    return "\n".join(lines)


def parent_models(config: MergeConfiguration) -> list[ModelReference]:
    """Base first, then the models in the order the config lists them."""
    listed = [config.base_model] if config.base_model is not None else []
    listed += [entry.model for entry in config.models or []]
    parents: list[ModelReference] = []
    for model in [*listed, *config.referenced_models()]:
        if model not in parents:
            parents.append(model)
    return parents
