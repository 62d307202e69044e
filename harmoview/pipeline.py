"""Sampling HarmoView: the flow sampler with three-way guidance, and `HarmoViewPipeline` (load once, call many).

Guidance (InstructPix2Pix-style, two conditions): with v_uncond = no references + negative prompt,
v_ref = references + negative prompt and v_ref_text = references + prompt,

    v = v_uncond + s_ref (v_ref - v_uncond) + s_text (v_ref_text - v_ref).

All scales 1 give v_ref_text, and then the extra forwards are skipped. Samplers: Euler on
`flow.sampling_sigmas` (the trainer's schedule) or diffusers' `UniPCMultistepScheduler` configured for
flow matching as diffusers' Wan pipeline configures it. Wan2.2 A14B: `low_noise_model` takes over below
t = 875 (`flow.EXPERT_BOUNDARY`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from harmoview.data.video_io import resize_center_crop, to_unit_range, write_video
from harmoview.flow import EXPERT_BOUNDARY, NUM_TRAIN_TIMESTEPS, euler_step, sampling_sigmas
from harmoview.model.config import FRONTAL_SLOT, VIEW_SLOTS, DiTConfig
from harmoview.model.encoders import EncoderPaths, Encoders, training_dtypes
from harmoview.model.references import References

SAMPLERS = ("euler", "unipc")
ReferenceImage = torch.Tensor | Image.Image
"""A reference crop: a PIL image or a (3, H, W) tensor in [-1, 1]."""


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


def _unipc(num_steps: int, shift: float):
    """diffusers' UniPC in flow-matching mode, configured as diffusers' Wan pipeline configures it."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=shift, solver_order=2,
    )  # fmt: skip
    scheduler.set_timesteps(num_steps)
    return scheduler


def _model_at(t: float, model: nn.Module, low_noise_model: nn.Module | None) -> nn.Module:
    """Wan2.2 A14B: the high-noise expert for t >= 875, the low-noise one below."""
    if low_noise_model is not None and t < EXPERT_BOUNDARY * NUM_TRAIN_TIMESTEPS:
        return low_noise_model
    return model


@torch.no_grad()
def sample(
    model: nn.Module, cond: Conditions, *, shape: tuple[int, ...], num_steps: int, generator: torch.Generator,
    sampler: str = "euler", shift: float = 5.0, guidance: Guidance | None = None,
    low_noise_model: nn.Module | None = None, autocast_dtype: torch.dtype | None = None, progress: bool = False,
) -> torch.Tensor:  # fmt: skip
    """Noise (sigma 1) -> latents (sigma 0): float32 (B, C, f, h, w). Seeds come from `generator` (CPU)."""
    if num_steps < 1:
        raise ValueError(f"steps must be >= 1, got {num_steps}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    guidance = guidance or Guidance()
    device = cond.text.device
    x = initial_noise(tuple(shape), generator, device)  # (B, C, f, h, w)
    scheduler = _unipc(num_steps, shift) if sampler == "unipc" else None
    if scheduler is not None:
        times = [float(t) for t in scheduler.timesteps]  # diffusers feeds its own timesteps to the model
    else:
        sigmas = sampling_sigmas(num_steps, shift).tolist()  # (num_steps + 1,) from 1 to 0
        times = [s * NUM_TRAIN_TIMESTEPS for s in sigmas[:-1]]
    models = [m for m in (model, low_noise_model) if m is not None]
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with ExitStack() as stack:
        for m in models:
            stack.enter_context(eval_mode(m))
        for i, t in enumerate(tqdm(times, desc="sampling", unit="step", disable=not progress)):
            with autocast:
                v = guided_velocity(_model_at(t, model, low_noise_model), x, t, cond, guidance)
            if scheduler is not None:
                x = scheduler.step(v, scheduler.timesteps[i], x, return_dict=False)[0].float()
            else:
                x = euler_step(x, v, sigmas[i], sigmas[i + 1])
    return x


# --- references -------------------------------------------------------------------------------------


def reference_pixels(image: ReferenceImage, size: tuple[int, int]) -> torch.Tensor:
    """A PIL image or a (3, H, W) tensor in [-1, 1] -> (3, h, w) float32 in [-1, 1], centre crop + resize."""
    if isinstance(image, Image.Image):
        array = np.array(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    elif isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
        array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    else:
        raise ValueError(f"a reference must be a PIL image or a (3, H, W) tensor, got {type(image).__name__}")
    return to_unit_range(resize_center_crop(array[None], size)[:, 0])  # (3, h, w)


def _check_views(references: Sequence[Mapping[str, ReferenceImage]]) -> None:
    for k, views in enumerate(references):
        unknown = set(views) - set(VIEW_SLOTS)
        if unknown:
            raise ValueError(f"identity {k}: unknown view slots {sorted(unknown)}; use {VIEW_SLOTS}")
        if not views:
            raise ValueError(f"identity {k} has no reference images")


# --- pipeline -------------------------------------------------------------------------------------


class HarmoViewPipeline:
    """A HarmoView DiT (optionally a Wan2.2 A14B low-noise expert) with its encoders: load once, call many times."""

    def __init__(
        self, model: nn.Module, encoders: Encoders, *, low_noise_model: nn.Module | None = None,
        model_path: str | None = None, low_noise_path: str | None = None,
    ) -> None:  # fmt: skip
        self.model, self.low_noise_model, self.encoders = model, low_noise_model, encoders
        self.model_path, self.low_noise_path = model_path, low_noise_path
        self.device = encoders.device
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.last_settings: dict = {}

    @classmethod
    def from_pretrained(
        cls, ckpt_dir: str | Path, encoders: EncoderPaths, *, device: str | torch.device | None = None,
        text_len: int = 512, vit_layers: Sequence[int] = (-2,), low_noise_ckpt: str | Path | None = None,
        dtype: torch.dtype | None = None,
    ) -> HarmoViewPipeline:  # fmt: skip
        """Load the encoders and the DiT from `ckpt_dir` (a HarmoView export, a training run, a Wan folder).

        device: default CUDA when available. dtype: the DiT's weights (default bf16 on GPU, float32 on CPU).
        """
        from harmoview.model.weights import build_model
        from harmoview.train.trainable import initial_config

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        bf16 = device.type == "cuda"
        dtype = dtype or (torch.bfloat16 if bf16 else torch.float32)
        enc = Encoders.load(encoders, device=device, text_len=text_len, vit_layers=vit_layers, **training_dtypes(bf16))
        models = []
        for ckpt in (ckpt_dir, low_noise_ckpt):
            if ckpt is None:
                models.append(None)
                continue
            config, directory = initial_config(Path(ckpt), None, enc)
            model, report = build_model(config, directory, device=device, dtype=dtype)
            if report is not None and report.new:  # a plain Wan folder: its HarmoView modules are random
                tqdm.write(f"warning: {len(report.new)} HarmoView tensors are not in {directory} and are random")
            models.append(model.requires_grad_(False))
        return cls(
            models[0], enc, low_noise_model=models[1], model_path=str(ckpt_dir),
            low_noise_path=None if low_noise_ckpt is None else str(low_noise_ckpt),
        )  # fmt: skip

    @property
    def config(self) -> DiTConfig:
        """The DiT's config."""
        return self.model.config

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        """(1, z, f, h, w) of a video; a clear error when the size does not fit the VAE and patch strides."""
        ts, ss = self.encoders.temporal_stride, self.encoders.spatial_stride
        if num_frames < 1 or (num_frames - 1) % ts:
            raise ValueError(f"--frames {num_frames} must be 1 + {ts}k (e.g. {1 + ts * 4}, 81)")
        _, ph, pw = self.config.patch_size
        for name, side, patch in (("height", height, ph), ("width", width, pw)):
            if side <= 0 or side % (ss * patch):
                raise ValueError(f"--{name} {side} must be a positive multiple of {ss * patch}")
        return 1, self.encoders.z_dim, 1 + (num_frames - 1) // ts, height // ss, width // ss

    @torch.no_grad()
    def encode_references(
        self, references: Sequence[Mapping[str, ReferenceImage]]
    ) -> tuple[References | None, torch.Tensor | None]:
        """Per identity {view: image} -> (References (1, N, S, ...), ViT features (1, N, T, Dv) or None)."""
        if not references:
            return None, None
        _check_views(references)
        if not self.config.use_references:
            raise ValueError(f"the model at {self.model_path} was built without references (use_references=False)")
        size = tuple(side * self.encoders.spatial_stride for side in self.config.ref_latent_hw)
        num_ids, num_slots = len(references), len(VIEW_SLOTS)
        present = torch.zeros(1, num_ids, num_slots, dtype=torch.bool)
        pixels = torch.zeros(1, num_ids, num_slots, 3, *size)  # (1, N, S, 3, h, w)
        for n, views in enumerate(references):
            for view, image in views.items():
                slot = VIEW_SLOTS.index(view)
                pixels[0, n, slot], present[0, n, slot] = reference_pixels(image, size), True
        codes = self.encoders.encode_images(pixels[present].to(self.device))  # (M, C, h', w')
        latents = codes.new_zeros(*present.shape, *codes.shape[1:])  # (1, N, S, C, h', w')
        latents[present.to(self.device)] = codes
        refs = References(latents=latents, present=present.to(self.device))
        vit = None
        if self.config.use_mfi and self.encoders.vit is not None:
            frontal = present[0, :, FRONTAL_SLOT]  # (N,)
            vit = torch.zeros(1, num_ids, *self.encoders.vit_feature_shape, device=self.device)  # (1, N, T, Dv)
            if frontal.any():
                vit[0, frontal.to(self.device)] = self.encoders.encode_vit(
                    pixels[0, frontal, FRONTAL_SLOT].to(self.device)
                )
        return refs, vit

    def conditions(
        self, prompt: str, references: Sequence[Mapping[str, ReferenceImage]], negative_prompt: str = ""
    ) -> Conditions:
        """Text and reference conditions of one run, each encoded once."""
        text = self.encoders.encode_text([prompt, negative_prompt])  # (2, Lt, Dt)
        refs, vit = self.encode_references(references)
        return Conditions(text=text[:1], negative_text=text[1:], references=refs, vit_features=vit)

    def __call__(
        self, prompt: str, references: Sequence[Mapping[str, ReferenceImage]] = (), *, num_frames: int = 81,
        height: int = 480, width: int = 832, steps: int = 50, sampler: str = "unipc", shift: float = 5.0,
        ref_scale: float = 1.0, text_scale: float = 5.0, negative_prompt: str = "", seed: int = 0,
        progress: bool = True,
    ) -> torch.Tensor:  # fmt: skip
        """Generate one video: (3, num_frames, height, width) float32 in [-1, 1] on the CPU.

        references: one {view slot: image} dict per identity (`harmoview.photo_refs.references_from_photos`
        makes them from plain photos).
        """
        shape = self.latent_shape(num_frames, height, width)
        cond = self.conditions(prompt, references, negative_prompt)
        latents = sample(
            self.model, cond, shape=shape, num_steps=steps, generator=torch.Generator().manual_seed(seed),
            sampler=sampler, shift=shift, guidance=Guidance(ref_scale=ref_scale, text_scale=text_scale),
            low_noise_model=self.low_noise_model, autocast_dtype=self.autocast_dtype, progress=progress,
        )  # fmt: skip
        self.last_settings = {
            "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "steps": steps, "sampler": sampler,
            "shift": shift, "ref_scale": ref_scale, "text_scale": text_scale, "num_frames": num_frames,
            "height": height, "width": width, "reference_slots": [sorted(views) for views in references],
            "model": self.model_path, "low_noise_model": self.low_noise_path,
        }  # fmt: skip
        return self.encoders.decode_video(latents)[0].cpu()  # (3, F, H, W)

    def save(self, frames: torch.Tensor, path: str | Path, fps: float = 16.0, sidecar: Mapping | None = None) -> Path:
        """Write the mp4 and `<path>.json` beside it: the last call's settings updated with `sidecar`."""
        path = write_video(frames, Path(path), fps)
        record = {**self.last_settings, "fps": fps, **(sidecar or {})}
        side = sidecar_path(path)
        tmp = side.with_name(f".{side.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        os.replace(tmp, side)
        return path


def sidecar_path(video: str | Path) -> Path:
    """The sidecar JSON of a video: `out.mp4` -> `out.mp4.json`."""
    video = Path(video)
    return video.with_name(video.name + ".json")
