"""`harmoview.sampling`: three-way guidance, the Euler and UniPC steps, the Wan2.2 expert switch."""

from __future__ import annotations

import pytest
import torch

from harmoview.flow import add_noise, velocity_target
from harmoview.sampling import Guidance, euler_step, guided_velocity, sample
from tests.harmoview.helpers import grey


def test_scales_one_equal_plain_conditional_prediction(pipe):
    cond = pipe.conditions("a man talks", [{"frontal": grey(), "left": grey(1)}], negative_prompt="blurry")
    x = torch.randn(1, 4, 2, 4, 6)
    calls = []
    hook = pipe.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        plain = guided_velocity(pipe.model, x, 700.0, cond, Guidance())
        assert len(calls) == 1  # the extra forwards are skipped
        direct = pipe.model(x, torch.tensor([700.0]), cond.text, cond.references, cond.vit_features)
        torch.testing.assert_close(plain, direct.float())
        guided = guided_velocity(pipe.model, x, 700.0, cond, Guidance(ref_scale=2.0, text_scale=3.0))
        assert len(calls) == 4 + 1  # v_ref_text, v_ref, v_uncond (+ the direct call)
    finally:
        hook.remove()
    assert not torch.allclose(guided, plain)


def test_three_way_guidance_formula(pipe):
    cond = pipe.conditions("a man talks", [{"frontal": grey()}])
    x, t, s_ref, s_text = torch.randn(1, 4, 2, 4, 6), torch.tensor([300.0]), 1.5, 4.0
    m = pipe.model.eval()
    v_rt = m(x, t, cond.text, cond.references, cond.vit_features)
    v_r = m(x, t, cond.negative_text, cond.references, cond.vit_features)
    v_u = m(x, t, cond.negative_text, None, None)
    expected = v_u + s_ref * (v_r - v_u) + s_text * (v_rt - v_r)
    got = guided_velocity(m, x, 300.0, cond, Guidance(ref_scale=s_ref, text_scale=s_text))
    torch.testing.assert_close(got, expected)


def test_expert_switch_at_boundary(pipe):
    """The low-noise expert answers below t = 875 only: the Euler steps with t < 875 see it."""
    cond = pipe.conditions("a person", [])
    seen = {"high": [], "low": []}

    class Expert(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x, t, *rest):
            seen[self.name].append(float(t[0]))
            return torch.zeros_like(x)

    sample(
        Expert("high"), cond, shape=(1, 4, 1, 2, 2), num_steps=6, generator=torch.Generator().manual_seed(0),
        shift=5.0, low_noise_model=Expert("low"),
    )  # fmt: skip
    assert seen["high"] and seen["low"]
    assert min(seen["high"]) >= 875 > max(seen["low"])


def test_one_euler_step_with_the_exact_velocity_recovers_the_data():
    """Straight paths: the true velocity eps - x0 carries x_s to the data in a single step."""
    x0, eps = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 4, 3, 8, 8)
    xs = add_noise(x0, eps, torch.tensor([0.9]))
    torch.testing.assert_close(euler_step(xs, velocity_target(x0, eps), 0.9, 0.0), x0, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_samplers_integrate_an_exact_flow_to_the_data(pipe, sampler):
    """With the exact velocity of a one-point data set, v = (x - x0) / sigma, both samplers end at x0."""
    x0 = torch.randn(1, 4, 1, 2, 2)

    class Oracle(torch.nn.Module):
        def forward(self, x, t, *rest):
            return (x - x0) / (t[0] / 1000).clamp_min(1e-3)

    cond = pipe.conditions("a person", [])
    out = sample(Oracle(), cond, shape=x0.shape, num_steps=8, generator=torch.Generator().manual_seed(0),
                 sampler=sampler, shift=5.0)  # fmt: skip
    # UniPC feeds the model diffusers' integer timesteps (999 for sigma 1): near, not exact
    torch.testing.assert_close(out, x0, atol=1e-4 if sampler == "euler" else 5e-3, rtol=0)


def test_bad_steps_and_sampler_are_clear_errors(pipe):
    cond = pipe.conditions("a person", [])
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sample(pipe.model, cond, shape=(1, 4, 1, 2, 2), num_steps=0, generator=gen)
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        sample(pipe.model, cond, shape=(1, 4, 1, 2, 2), num_steps=2, generator=gen, sampler="ddim")
