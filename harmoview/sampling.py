"""The sampler: noise -> latents along the flow ODE, with three-way guidance and Euler or UniPC steps.

Guidance (InstructPix2Pix-style, two conditions): with v_uncond = no references + negative prompt,
v_ref = references + negative prompt and v_ref_text = references + prompt,

    v = v_uncond + s_ref (v_ref - v_uncond) + s_text (v_ref_text - v_ref).

All scales 1 give v_ref_text, and then the extra forwards are skipped. Steps: Euler on
`flow.sampling_sigmas` (the trainer's schedule) or diffusers' `UniPCMultistepScheduler` configured for
flow matching as diffusers' Wan pipeline configures it. Wan2.2 A14B: `low_noise_model` takes over below
t = 875 (`flow.EXPERT_BOUNDARY`).

The one sampler of the project: `HarmoViewPipeline` (inference) and the training previews both call
`sample`. The noise process, the loss target and the sigma schedule live in `harmoview.flow`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from harmoview.flow import DEFAULT_SHIFT, EXPERT_BOUNDARY, NUM_TRAIN_TIMESTEPS, sampling_sigmas
from harmoview.model.references import References

SAMPLERS = ("euler", "unipc")


@dataclass(kw_only=True, slots=True)
class Guidance:
    """Scales of the three-way classifier-free guidance; 1 and 1 = the plain conditional prediction."""

    ref_scale: float = 1.0
    """s_ref: pull from no references towards the references (both with the negative prompt)."""
    text_scale: float = 1.0
    """s_text: pull from the negative prompt towards the prompt (both with the references)."""

    @property
    def is_plain(self) -> bool:
        """Both scales 1: one forward per step, the plain conditional prediction."""
        return self.ref_scale == 1.0 and self.text_scale == 1.0


@dataclass(kw_only=True, slots=True)
class Conditions:
    """What the model is conditioned on during one sampling run (computed once per run)."""

    text: torch.Tensor
    """(1, Lt, Dt) features of the prompt."""
    negative_text: torch.Tensor
    """(1, Lt, Dt) features of the negative (or empty) prompt."""
    references: References | None = None
    vit_features: torch.Tensor | None = None
    """(1, N, T, Dv) MFI features of each identity's frontal reference, or None."""


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block; each submodule's own mode is restored afterwards
    (model.train() would also switch submodules that were deliberately left in eval mode)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def initial_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Gaussian noise at sigma 1, drawn on the generator's device and moved: a CPU generator gives the
    same noise whatever device the model runs on."""
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device)


def guided_velocity(model: nn.Module, x: torch.Tensor, t: float, cond: Conditions, guidance: Guidance) -> torch.Tensor:
    """The three-way guided velocity at (x, t); t is the model's timestep in [0, 1000]."""
    tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)  # (B,)
    v_ref_text = model(x, tt, cond.text, cond.references, cond.vit_features).float()  # (B, C, f, h, w)
    if guidance.is_plain:
        return v_ref_text
    v_ref = model(x, tt, cond.negative_text, cond.references, cond.vit_features).float()
    if cond.references is None and cond.vit_features is None:
        v_uncond = v_ref  # text-only: "no references" is what v_ref already is
    elif guidance.ref_scale == 1.0:
        return v_ref + guidance.text_scale * (v_ref_text - v_ref)
    else:
        v_uncond = model(x, tt, cond.negative_text, None, None).float()
    return v_uncond + guidance.ref_scale * (v_ref - v_uncond) + guidance.text_scale * (v_ref_text - v_ref)


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step of the flow ODE from sigma to sigma_next (< sigma): x <- x + (s_next - s) v."""
    return x + (sigma_next - sigma) * velocity.to(x.dtype)


class _EulerSteps:
    """Euler on the shifted sigma grid of `flow.sampling_sigmas`, the schedule the trainer samples from."""

    def __init__(self, num_steps: int, shift: float) -> None:
        self.sigmas = sampling_sigmas(num_steps, shift).tolist()  # (num_steps + 1,) from 1 to 0
        self.times = [s * NUM_TRAIN_TIMESTEPS for s in self.sigmas[:-1]]

    def step(self, i: int, x: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        return euler_step(x, velocity, self.sigmas[i], self.sigmas[i + 1])


class _UniPCSteps:
    """diffusers' UniPC in flow-matching mode, configured as diffusers' Wan pipeline configures it."""

    def __init__(self, num_steps: int, shift: float) -> None:
        from diffusers import UniPCMultistepScheduler

        self.scheduler = UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=shift, solver_order=2,
        )  # fmt: skip
        self.scheduler.set_timesteps(num_steps)
        self.times = [float(t) for t in self.scheduler.timesteps]  # diffusers feeds its own timesteps to the model

    def step(self, i: int, x: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(velocity, self.scheduler.timesteps[i], x, return_dict=False)[0].float()


def _steps(sampler: str, num_steps: int, shift: float) -> _EulerSteps | _UniPCSteps:
    if num_steps < 1:
        raise ValueError(f"steps must be >= 1, got {num_steps}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    return _UniPCSteps(num_steps, shift) if sampler == "unipc" else _EulerSteps(num_steps, shift)


def _model_at(t: float, model: nn.Module, low_noise_model: nn.Module | None) -> nn.Module:
    """Wan2.2 A14B: the high-noise expert for t >= 875, the low-noise one below."""
    if low_noise_model is not None and t < EXPERT_BOUNDARY * NUM_TRAIN_TIMESTEPS:
        return low_noise_model
    return model


@torch.no_grad()
def sample(
    model: nn.Module, cond: Conditions, *, shape: tuple[int, ...], num_steps: int, generator: torch.Generator,
    sampler: str = "euler", shift: float = DEFAULT_SHIFT, guidance: Guidance | None = None,
    low_noise_model: nn.Module | None = None, autocast_dtype: torch.dtype | None = None, progress: bool = False,
) -> torch.Tensor:  # fmt: skip
    """Noise (sigma 1) -> latents (sigma 0): float32 (B, C, f, h, w). Seeds come from `generator` (CPU)."""
    steps = _steps(sampler, num_steps, shift)
    guidance = guidance or Guidance()
    device = cond.text.device
    x = initial_noise(tuple(shape), generator, device)  # (B, C, f, h, w)
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with ExitStack() as stack:
        for m in (model, low_noise_model):
            if m is not None:
                stack.enter_context(eval_mode(m))
        for i, t in enumerate(tqdm(steps.times, desc="sampling", unit="step", disable=not progress)):
            with autocast:
                v = guided_velocity(_model_at(t, model, low_noise_model), x, t, cond, guidance)  # (B, C, f, h, w)
            x = steps.step(i, x, v)
    return x
