"""Rectified flow (schedule, noising, target, Euler) and view dropout frequencies."""

from __future__ import annotations

import math

import pytest
import torch

from harmoview.flow import (
    EXPERT_BOUNDARY,
    add_noise,
    euler_step,
    expert_sigma_range,
    sample_sigma,
    sampling_sigmas,
    shift_sigma,
    unshift_sigma,
    velocity_target,
)
from harmoview.train.dropout import ViewDropout
from harmoview.train.inputs import generator, seed_for


def test_shift_is_invertible_and_moves_mass_to_high_noise():
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(unshift_sigma(shift_sigma(s, 5.0), 5.0), s)
    assert shift_sigma(torch.tensor(0.5), 5.0) == pytest.approx(5 * 0.5 / (1 + 4 * 0.5))  # 0.8333
    torch.testing.assert_close(shift_sigma(s, 1.0), s)


def test_noising_target_and_one_euler_step_recover_the_data():
    x0, eps = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    sigma = torch.tensor([0.3, 0.9])
    xs = add_noise(x0, eps, sigma)
    torch.testing.assert_close(xs[0], 0.7 * x0[0] + 0.3 * eps[0])
    v = velocity_target(x0, eps)
    # the exact velocity carries x_s to the data in one Euler step (straight paths)
    torch.testing.assert_close(euler_step(xs[1:], v[1:], 0.9, 0.0), x0[1:], atol=1e-6, rtol=0)
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


def test_seeds_are_stable_and_distinct():
    assert seed_for(0, 1, "smp_a") == seed_for(0, 1, "smp_a")
    assert seed_for(0, 1, "smp_a") != seed_for(0, 2, "smp_a")
    assert 0 <= seed_for("x") < 2**63


def test_view_dropout_frequencies_match_the_configured_probabilities():
    p, n = 0.3, 20000
    dropout = ViewDropout(p_view=p, p_all_refs=0.1, p_text=0.2)
    # identity 0 has 3 views, identity 1 only its frontal one, identity 2 none
    present = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    kept = torch.stack([dropout.drop_views(present, generator(7, i)) for i in range(n)]).double()  # (n, 3, 5)
    assert not bool((kept.bool() & ~present).any()), "an absent view was made present"
    assert bool((kept[:, :2].sum(-1) >= 1).all()), "an identity with views lost all of them"
    assert bool((kept[:, 2] == 0).all())
    # one of k present views is kept with (1 - p) + p^k / k (all dropped -> one restored uniformly)
    expected = (1 - p) + p**3 / 3
    tolerance = 4 * math.sqrt(expected * (1 - expected) / n)
    for view in (0, 1, 3):
        assert abs(float(kept[:, 0, view].mean()) - expected) < tolerance
    assert float(kept[:, 1, 0].mean()) == 1.0  # a single view is never dropped
    all_refs = torch.tensor([dropout.drop_all_refs(generator(8, i)) for i in range(n)]).double().mean()
    text = torch.tensor([dropout.drop_text(generator(9, i)) for i in range(n)]).double().mean()
    assert abs(float(all_refs) - 0.1) < 4 * math.sqrt(0.09 / n)
    assert abs(float(text) - 0.2) < 4 * math.sqrt(0.16 / n)


def test_no_dropout_keeps_everything_and_bad_probabilities_are_refused():
    present = torch.tensor([[1, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(ViewDropout().drop_views(present, generator(0)), present)
    with pytest.raises(ValueError, match="probability"):
        ViewDropout(p_view=1.5)
