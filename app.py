"""Merge Studio entry point (also the Hugging Face Space's app_file).

python app.py        # builds the starter zoo on first start, then serves http://127.0.0.1:7860
"""

from __future__ import annotations

import logging

from pipelines.starter_zoo import ensure_starter_zoo
from studio.settings import load_settings
from studio.ui import build_app, launch_kwargs

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
settings = load_settings()
ensure_starter_zoo(settings)
demo = build_app(settings)

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
