"""Rectified flow, Wan's training objective: the noise process, the loss target and the sigma schedule.

Conventions (Wan2.1/2.2): sigma s in [0, 1] mixes data and noise linearly,

    x_s = (1 - s) * x0 + s * eps,        the model predicts the velocity  v = eps - x0,

and sees the timestep t = 1000 * s. Training draws s uniformly and shifts it towards the noisy end,
s' = k * s / (1 + (k - 1) * s) with k = 5 by default, because high-resolution video needs more steps at
high noise to fix its layout. Sampling walks s from 1 to 0 on `sampling_sigmas` (the steps themselves,
Euler or UniPC, are in `harmoview.sampling`).

Wan2.2 A14B splits the trajectory between two experts at t = 875: the high-noise expert sees
t >= 875, the low-noise one t < 875. `expert_sigma_range` gives each expert's slice of [0, 1].

The model never sees this module (DiT convention): the trainer and `harmoview.sampling` call it around
the model.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SHIFT = 5.0
EXPERT_BOUNDARY = 0.875  # Wan2.2 A14B: t = 875 of 1000
EXPERTS = ("high", "low")


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """s' = k s / (1 + (k - 1) s): k > 1 spends more of [0, 1] at high noise; k = 1 is the identity."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def unshift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of `shift_sigma`: s = s' / (k - (k - 1) s')."""
    return sigma / (shift - (shift - 1) * sigma)


def expert_sigma_range(expert: str | None) -> tuple[float, float]:
    """The (low, high) sigma interval an expert trains on: 'high' = t >= 875, 'low' = t < 875, None = all."""
    if expert is None:
        return 0.0, 1.0
    if expert == "high":
        return EXPERT_BOUNDARY, 1.0
    if expert == "low":
        return 0.0, EXPERT_BOUNDARY
    raise ValueError(f"unknown expert {expert!r}; use one of {EXPERTS}")


def sample_sigma(generator: torch.Generator, shift: float, sigma_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """One shifted training sigma in `sigma_range`, drawn with `generator`.

    Uniform u is drawn between the *unshifted* ends of the range and then shifted, so the restriction to
    an expert's range keeps exactly the shifted distribution's shape inside it.
    """
    lo, hi = (unshift_sigma(torch.tensor(v, dtype=torch.float64), shift) for v in sigma_range)
    u = torch.rand((), generator=generator, dtype=torch.float64)
    return float(shift_sigma(lo + (hi - lo) * u, shift))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x0 + s eps; sigma (B,) broadcasts over (B, C, F, H, W)."""
    s = sigma.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))  # (B, 1, 1, 1, 1)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_s / d s = eps - x0: what the model learns to predict."""
    return noise - x0


def flow_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32 (bf16 squares lose the small residuals late in training)."""
    return torch.nn.functional.mse_loss(prediction.float(), target.float())


def timesteps(sigma: torch.Tensor) -> torch.Tensor:
    """The model's timestep for a sigma: t = 1000 s."""
    return sigma * NUM_TRAIN_TIMESTEPS


def sampling_sigmas(num_steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """(num_steps + 1,) shifted sigmas from 1 down to 0, the grid of an Euler sampler."""
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift).float()
