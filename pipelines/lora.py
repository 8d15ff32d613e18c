"""LoRA for the training recipes: wrap a model with a peft adapter, save merged weights + adapter.

A LoRA run trains only the adapter, but each checkpoint is still a complete Hugging Face model
(the adapter merged into a copy of the weights), so the catalog, chat, scoring and merging use
it like any other checkpoint; the adapter alone is written to `<checkpoint>/adapter/`, which is
what one ships (the real demo pair ships its CPT this way). One process only: merging a copy
needs the whole model in memory, which FSDP/ZeRO-3 shards.

Tests: tests/test_cpt.py (a LoRA run: adapter saved, merged weights = base + B @ A * scale).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from studio.training.config import LoraSettings, TrainConfigError

ADAPTER_DIR = "adapter"


def with_lora(model: torch.nn.Module, settings: LoraSettings, *, distributed: bool) -> PeftModel:
    """`model` with a trainable LoRA adapter on `settings.target_modules`; the rest frozen."""
    if distributed:
        raise TrainConfigError(
            "lora runs on one process (or plain DDP): each checkpoint merges the adapter into "
            "a full copy of the model, which FSDP/DeepSpeed shard; remove `lora:` or launch "
            "without FSDP/DeepSpeed"
        )
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in settings.target_modules if m not in present]
    if missing:
        raise TrainConfigError(
            f"lora.target_modules {missing} are not layers of this model; it has e.g. "
            f"{sorted(n for n in present if n.endswith('proj'))[:8]}"
        )
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_lora_checkpoint(model: PeftModel, folder: Path) -> None:
    """The merged model in `folder` (safetensors) and the adapter alone in `folder/adapter`."""
    model.save_pretrained(folder / ADAPTER_DIR)
    # merge_and_unload changes the model it is called on: merge a copy, keep training the original
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(folder)


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
