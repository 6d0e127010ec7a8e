"""Optimizer and learning-rate schedule of one training stage.

The schedule is a linear warmup from 0 to the peak rate over ``warmup_steps``, then a cosine decay
to ``peak * min_lr_ratio`` at the end of the stage. It is a ``LambdaLR``, whose state dict holds
only plain numbers (so checkpoints load with ``weights_only=True``).
"""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay

from soundception.train.config import OPTIMIZERS


def create_optimizer(model: torch.nn.Module, name: str, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``adamw`` (default) or ``sgd`` (momentum 0.9, Nesterov) over ``model``'s trainable parameters.

    Weight decay applies to weight matrices and convolution kernels only: norm-layer weights and
    every bias (all parameters of one dimension or fewer) are left undecayed, grouped by timm's
    ``param_groups_weight_decay`` as timm's own training script does.
    """
    groups = param_groups_weight_decay(model, weight_decay)  # skips parameters without requires_grad
    if not groups:
        raise ValueError("no trainable parameters")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier at ``step`` (0-based within the stage), in [0, 1]."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def create_scheduler(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                     min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine ``LambdaLR``, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps=warmup_steps, total_steps=total_steps,
                                              min_lr_ratio=min_lr_ratio))
