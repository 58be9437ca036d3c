"""The optimizer and learning-rate schedule of a training run."""

from __future__ import annotations

import math

import torch


def make_optimizer(encoder, loss_fn, train_config) -> torch.optim.AdamW:
    # no weight decay on biases, norms and the temperature
    decay, no_decay = [], []
    for name, param in encoder.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    if isinstance(loss_fn, torch.nn.Module):
        no_decay += [p for p in loss_fn.parameters() if p.requires_grad]
    groups = [
        {"params": decay, "weight_decay": train_config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one pass over each tensor instead of one per arithmetic op (CPU and CUDA alike)
    return torch.optim.AdamW(groups, lr=train_config.learning_rate, fused=True)


def make_scheduler(optimizer, train_config) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then linear decay to 0 at ``max_steps``, cosine, or constant."""
    warmup, total, kind = train_config.warmup_steps, train_config.max_steps, train_config.schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
