"""Learning-rate schedules for continual pre-training and SFT, as a multiplier of the peak LR.

Presets (all start with a linear warmup from peak/warmup to the peak):
- rewarm_cosine: linear re-warm, then cosine re-decay to min_lr over the rest of the run.
  Gupta et al. 2023 ("Continual Pre-Training of Large Language Models: How to re-warm your
  model?") found re-warming and re-decaying the LR on the new data is what recovers
  pre-training-like loss; the reference CPT study used it with a peak of 1.5e-5.
- wsd: warmup-stable-decay (Hu et al. 2024, MiniCPM): flat at the peak, then a linear decay to
  min_lr over the last `decay_fraction` of the steps; a stable-phase checkpoint can be
  continued without re-warming.
- constant: warmup, then the peak until the end (min_lr unused).

    scheduler = build_scheduler(optimizer, config.schedule, max_steps=1000)
    lr_at(config.schedule, step=0, max_steps=1000)   # the LR of the first update

Tests: tests/test_cpt.py (presets; the re-warm on "start from checkpoint").
"""

from __future__ import annotations

import math
from functools import partial

import torch

from studio.training.config import Schedule


def lr_at(schedule: Schedule, *, step: int, max_steps: int) -> float:
    """The learning rate of update number `step` (0-based) in a run of `max_steps` updates."""
    peak, floor = schedule.lr, schedule.min_lr
    warmup = schedule.warmup_steps
    if step < warmup:
        # (step + 1) / warmup: the first update already moves (lr 0 would waste a step).
        return peak * (step + 1) / warmup
    if schedule.preset == "constant":
        return peak
    if schedule.preset == "wsd":
        decay_steps = max(1, round(schedule.decay_fraction * max_steps))
        decay_start = max(warmup, max_steps - decay_steps)
        if step < decay_start:
            return peak
        progress = min(1.0, (step - decay_start + 1) / max(1, max_steps - decay_start))
        return peak + (floor - peak) * progress
    # rewarm_cosine: cosine from the peak (right after warmup) down to the floor at the last step
    span = max(1, max_steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _factor(step: int, *, schedule: Schedule, max_steps: int) -> float:
    return lr_at(schedule, step=step, max_steps=max_steps) / schedule.lr


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: Schedule, *, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose LR at update `k` is `lr_at(schedule, step=k)` (optimizer lr = peak)."""
    # partial, not a lambda: the scheduler's state_dict then pickles (accelerate saves it).
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(_factor, schedule=schedule, max_steps=max_steps)
    )
