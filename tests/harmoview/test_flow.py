"""Rectified flow: the sigma shift, noising, the velocity target, the sampling grid and expert ranges."""

from __future__ import annotations

import math

import pytest
import torch

from harmoview.flow import (
    EXPERT_BOUNDARY,
    add_noise,
    expert_sigma_range,
    sample_sigma,
    sampling_sigmas,
    shift_sigma,
    unshift_sigma,
    velocity_target,
)
from harmoview.train.inputs import generator


def test_shift_is_invertible_and_moves_mass_to_high_noise():
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(unshift_sigma(shift_sigma(s, 5.0), 5.0), s)
    assert shift_sigma(torch.tensor(0.5), 5.0) == pytest.approx(5 * 0.5 / (1 + 4 * 0.5))  # 0.8333
    torch.testing.assert_close(shift_sigma(s, 1.0), s)


def test_noising_target_and_sigma_grid():
    x0, eps = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    sigma = torch.tensor([0.3, 0.9])
    xs = add_noise(x0, eps, sigma)
    torch.testing.assert_close(xs[0], 0.7 * x0[0] + 0.3 * eps[0])
    torch.testing.assert_close(velocity_target(x0, eps), eps - x0)
    grid = sampling_sigmas(10, 5.0)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and bool((grid[1:] < grid[:-1]).all())


def test_sampled_sigmas_follow_the_shifted_law_and_expert_ranges():
    draws = torch.tensor([sample_sigma(generator(0, i), 3.0) for i in range(4000)])
    # P(s' <= 0.5) = P(u <= unshift(0.5)) = 0.5 / (3 - 2 * 0.5) = 0.25
    assert abs(float((draws <= 0.5).double().mean()) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 4000)
    high = [sample_sigma(generator(1, i), 5.0, expert_sigma_range("high")) for i in range(500)]
    low = [sample_sigma(generator(2, i), 5.0, expert_sigma_range("low")) for i in range(500)]
    assert min(high) >= EXPERT_BOUNDARY and max(low) < EXPERT_BOUNDARY
    with pytest.raises(ValueError, match="expert"):
        expert_sigma_range("middle")
