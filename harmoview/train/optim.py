"""Optimisation pieces of the trainer: AdamW, the learning-rate warm-up, EMA."""

from __future__ import annotations

import torch
from torch import nn


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]):
    """AdamW over the trainable parameters; no weight decay on norms, biases, gates and learned tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(("tokens", "token", "embedding")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = torch.cuda.is_available() and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, fused=fused or None)


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up, then constant.

    A pure function of the step, so a resumed run needs no scheduler state to continue exactly.
    """
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


def ema_decay_at(num_steps: int, decay: float) -> float:
    """EMA decay after `num_steps` optimiser steps (1 = the first): min(decay, (1 + n) / (10 + n)).

    The warm-up keeps a short stage from exporting mostly its initial weights: with a constant 0.999 the
    average still holds e^-2 = 13.5% of the initial weights after 2000 steps, while with the warm-up the
    first updates nearly replace the average (decay 0.18 at n = 1, 0.5 at n = 8, 0.9 at n = 80, and
    0.999 from n = 8990 on). A pure function of the step, so a resumed run needs no extra state.
    """
    return min(decay, (1.0 + num_steps) / (10.0 + num_steps))


class EMA:
    """Exponential moving average of the trainable parameters, kept in float32, with a decay warm-up.

    Update n (after the n-th optimiser step of the stage) uses decay_n = min(decay, (1 + n) / (10 + n))
    (`ema_decay_at`). Works on FSDP2-sharded parameters too: each rank averages its own shard (DTensor
    arithmetic).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module, num_steps: int) -> None:
        """shadow <- d * shadow + (1 - d) * weights with d = `ema_decay_at(num_steps)`, for the trainable weights.

        `num_steps`: optimiser steps taken so far in this stage, the one just taken included (1 at the first).
        """
        weight = 1.0 - ema_decay_at(num_steps, self.decay)
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), weight)

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        """Exchange model weights and EMA weights (call twice to undo): export or preview with EMA."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                current = p.detach().float().clone()
                p.copy_(self.shadow[name].to(p.dtype))
                self.shadow[name].copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights by parameter name (for checkpoints)."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy checkpointed shadow weights in place."""
        for name, value in state.items():
            self.shadow[name].copy_(value)
