"""The project's shipped demo files (assets/), for the defaults the UI shows on first start.

The app opens on the demo zoo (a word-level vocabulary of the fictional demo domain), so the
Merge tab's live probe starts on the demo domain's own held-out text: English clinical prose
would be mostly unknown words to those models. A user with other models types their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_EVAL = ASSETS / "demo_domain" / "eval"


@dataclass(frozen=True)
class DemoProbe:
    domain_text: str
    general_text: str
    prompt: str


def demo_probe() -> DemoProbe | None:
    """The first held-out paragraph of each demo text and the first completion prompt; None in
    a checkout without the demo domain's files."""
    try:
        domain = (DEMO_EVAL / "domain_text.txt").read_text("utf-8").split("\n\n")[0].strip()
        general = (DEMO_EVAL / "general_text.txt").read_text("utf-8").split("\n\n")[0].strip()
        first = (DEMO_EVAL / "domain_completion.jsonl").read_text("utf-8").splitlines()[0]
    except (OSError, IndexError):
        return None
    return DemoProbe(domain, general, json.loads(first)["ctx"])
