"""`HarmoViewPipeline`: a HarmoView checkpoint and its encoders, loaded once and called many times.

    pipe = HarmoViewPipeline.from_pretrained(ckpt, EncoderPaths.from_wan_dir(WAN, vit=VIT))
    frames = pipe("a man talks", references=[{"frontal": image}])  # (3, F, H, W) in [-1, 1]
    pipe.save(frames, "out.mp4")  # + out.mp4.json with the settings

The pipeline encodes the prompt and the reference crops, then calls the sampler (`harmoview.sampling`:
three-way guidance, Euler or UniPC steps, the Wan2.2 A14B expert switch) and decodes the latents. It loads
weights through the model layer only; nothing here depends on training code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from harmoview.data.video_io import resize_center_crop, to_unit_range, write_video
from harmoview.flow import DEFAULT_SHIFT
from harmoview.model.config import FRONTAL_SLOT, VIEW_SLOTS, DiTConfig
from harmoview.model.encoders import EncoderPaths, Encoders, training_dtypes
from harmoview.model.references import References
from harmoview.model.weights import build_model, check_export_encoders, initial_config
from harmoview.sampling import Conditions, Guidance, sample

ReferenceImage = torch.Tensor | Image.Image
"""A reference crop: a PIL image or a (3, H, W) tensor in [-1, 1]."""


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
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        bf16 = device.type == "cuda"
        dtype = dtype or (torch.bfloat16 if bf16 else torch.float32)
        enc = Encoders.load(encoders, device=device, text_len=text_len, vit_layers=vit_layers, **training_dtypes(bf16))
        model = _load_dit(Path(ckpt_dir), enc, device, dtype)  # the main model first: its errors come first
        low_noise = None if low_noise_ckpt is None else _load_dit(Path(low_noise_ckpt), enc, device, dtype)
        return cls(
            model, enc, low_noise_model=low_noise, model_path=str(ckpt_dir),
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
        present = torch.zeros(1, num_ids, num_slots, dtype=torch.bool)  # (1, N, S)
        pixels = torch.zeros(1, num_ids, num_slots, 3, *size)  # (1, N, S, 3, h, w)
        for n, views in enumerate(references):
            for view, image in views.items():
                slot = VIEW_SLOTS.index(view)
                pixels[0, n, slot], present[0, n, slot] = reference_pixels(image, size), True
        codes = self.encoders.encode_images(pixels[present].to(self.device))  # (M, C, h', w')
        latents = codes.new_zeros(*present.shape, *codes.shape[1:])  # (1, N, S, C, h', w')
        latents[present.to(self.device)] = codes
        refs = References(latents=latents, present=present.to(self.device))
        return refs, self._frontal_vit_features(pixels, present)

    def _frontal_vit_features(self, pixels: torch.Tensor, present: torch.Tensor) -> torch.Tensor | None:
        """MFI features (1, N, T, Dv) of each identity's frontal crop (zeros without one); None when MFI is off.

        pixels: (1, N, S, 3, h, w) reference crops; present: (1, N, S) which slots hold one.
        """
        if not (self.config.use_mfi and self.encoders.vit is not None):
            return None
        frontal = present[0, :, FRONTAL_SLOT]  # (N,)
        vit = torch.zeros(1, present.shape[1], *self.encoders.vit_feature_shape, device=self.device)  # (1, N, T, Dv)
        if frontal.any():
            vit[0, frontal.to(self.device)] = self.encoders.encode_vit(pixels[0, frontal, FRONTAL_SLOT].to(self.device))
        return vit

    def conditions(
        self, prompt: str, references: Sequence[Mapping[str, ReferenceImage]], negative_prompt: str = ""
    ) -> Conditions:
        """Text and reference conditions of one run, each encoded once."""
        text = self.encoders.encode_text([prompt, negative_prompt])  # (2, Lt, Dt)
        refs, vit = self.encode_references(references)
        return Conditions(text=text[:1], negative_text=text[1:], references=refs, vit_features=vit)

    def __call__(
        self, prompt: str, references: Sequence[Mapping[str, ReferenceImage]] = (), *, num_frames: int = 81,
        height: int = 480, width: int = 832, steps: int = 50, sampler: str = "unipc", shift: float = DEFAULT_SHIFT,
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
        paths = {k: v and str(v) for k, v in asdict(self.encoders.paths).items()}
        self.last_settings = {
            "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "steps": steps, "sampler": sampler,
            "shift": shift, "ref_scale": ref_scale, "text_scale": text_scale, "num_frames": num_frames,
            "height": height, "width": width, "reference_slots": [sorted(views) for views in references],
            "model": self.model_path, "low_noise_model": self.low_noise_path,
            "encoders": self.encoders.record() | {"paths": paths},  # text_len, ViT layers, fingerprints
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


def _load_dit(ckpt: Path, encoders: Encoders, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A frozen DiT from a HarmoView export, a training run or a Wan folder, sized to agree with `encoders`."""
    config, directory = initial_config(ckpt, None, encoders)
    check_export_encoders(directory, encoders)  # e.g. other --vit-layers than training used: refused, named
    model, report = build_model(config, directory, device=device, dtype=dtype)
    if report is not None and report.new:  # a plain Wan folder: its HarmoView modules are random
        tqdm.write(f"warning: {len(report.new)} HarmoView tensors are not in {directory} and are random")
    return model.requires_grad_(False)


def sidecar_path(video: str | Path) -> Path:
    """The sidecar JSON of a video: `out.mp4` -> `out.mp4.json`."""
    video = Path(video)
    return video.with_name(video.name + ".json")
