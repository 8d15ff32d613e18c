"""Merge Studio: domain-adapt language models by continual pre-training and model merging.

The core package. Nothing here imports gradio except `studio.ui`.
"""

__version__ = "0.1.0"
