"""The Gradio app: one module per tab, each thin wiring to core functions.

The only package that imports gradio. `build_app` is what app.py (and the tests) launch.
"""

from studio.ui.app import build_app, launch_kwargs

__all__ = ["build_app", "launch_kwargs"]
