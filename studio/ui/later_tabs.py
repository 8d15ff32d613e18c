"""Score and Train tabs: what each will do, until its issue fills it in.

Kept honest: each says what is coming and what to use meanwhile, and offers no controls that
do nothing.
"""

from __future__ import annotations

import gradio as gr

LATER = {
    "Score": "Benchmark accuracy and domain perplexity of the merge and its parents, and curves "
    "of score against merge weight.",
    "Train": "Continual pre-training and instruction tuning that make the checkpoints you merge.",
}


def build_later_tabs() -> None:
    for name, text in LATER.items():
        with gr.Tab(name, id=name.lower(), elem_id=f"{name.lower()}-tab"):
            gr.Markdown(f"### {name}\n{text}\n\n*Not available in this version yet.*")
