"""Preview videos during training: a few Euler steps of the flow ODE, decoded and written as mp4 + PNG.

`sample_euler` is the sampling core (noise at sigma 1 -> latents at sigma 0 on `flow.sampling_sigmas`,
optional classifier-free guidance on the text); the generate command builds its full sampler on it.
`render_preview` runs it for the first sample of a training batch, with that sample's conditions, and
writes `<out>/previews/step_XXXXXXXX.mp4` and a `.png` contact sheet beside it, plus the sample's
ground truth (its latents decoded) once as `target.mp4` / `target.png`, to compare against.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from torch import nn

from harmoview.encoders import Encoders
from harmoview.flow import euler_step, sampling_sigmas, timesteps
from harmoview.inputs import EncodedBatch
from harmoview.references import References

PREVIEW_DIR = "previews"
CONTACT_FRAMES = 16
"""Most frames on a preview's contact sheet (evenly spaced): 81 frames side by side is unreadable."""
_CODECS = ("libx264", "mpeg4")  # H.264 when FFmpeg has it; MPEG-4 part 2 is in every FFmpeg build


# --- sampling ----------------------------------------------------------------------------------------


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


def predict_velocity(
    model: nn.Module, x: torch.Tensor, sigma: float, text: torch.Tensor, references: References | None,
    vit_features: torch.Tensor | None, *, guidance: float = 1.0, null_text: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The model's velocity at (x, sigma), with classifier-free guidance on the text when guidance != 1.

    Guided: v = v_uncond + g (v_cond - v_uncond), v_uncond from `null_text` (the empty prompt's features,
    (Lt, Dt) or (B, Lt, Dt)) with the same references and ViT features: only the text is guided.
    """
    t = timesteps(torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32))  # (B,)
    v_cond = model(x, t, text, references, vit_features).float()  # (B, C, f, h, w)
    if guidance == 1.0:
        return v_cond
    if null_text is None:
        raise ValueError(f"guidance {guidance} needs null_text (the empty prompt's features)")
    null = null_text.to(text.device, text.dtype).expand_as(text)  # (B, Lt, Dt)
    v_uncond = model(x, t, null, references, vit_features).float()  # (B, C, f, h, w)
    return v_uncond + guidance * (v_cond - v_uncond)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def sample_euler(
    model: nn.Module, *, shape: tuple[int, int, int, int, int], text: torch.Tensor,
    references: References | None, vit_features: torch.Tensor | None, num_steps: int, shift: float,
    generator: torch.Generator, guidance: float = 1.0, null_text: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:  # fmt: skip
    """Integrate the flow ODE from pure noise (sigma 1) to latents (sigma 0) with `num_steps` Euler steps.

    shape: (B, C, f, h, w) of the latents; text (B, Lt, Dt) on the model's device. The model is in
    eval mode for the duration. autocast_dtype: run the model under autocast (bf16 on GPU); the state
    x stays float32. Returns float32 latents (B, C, f, h, w).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    device = text.device
    sigmas = sampling_sigmas(num_steps, shift).tolist()  # (num_steps + 1,) from 1 to 0
    x = initial_noise(tuple(shape), generator, device)  # (B, C, f, h, w)
    with eval_mode(model):
        for sigma, sigma_next in itertools.pairwise(sigmas):
            with _autocast(device, autocast_dtype):
                velocity = predict_velocity(
                    model, x, sigma, text, references, vit_features, guidance=guidance, null_text=null_text
                )  # (B, C, f, h, w)
            x = euler_step(x, velocity, sigma, sigma_next)
    return x


# --- writing -----------------------------------------------------------------------------------------


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8 RGB."""
    if frames.ndim != 4 or frames.shape[0] != 3:
        raise ValueError(f"frames must be (3, F, H, W), got {tuple(frames.shape)}")
    pixels = ((frames.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().numpy()  # (F, H, W, 3)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row / column where H or W is odd: yuv420p halves the chroma planes."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _video_codec() -> str:
    for name in _CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # av.codec.codec.UnknownCodecError, not exported under one name across versions
            continue
    raise RuntimeError(f"this FFmpeg build has none of the encoders {_CODECS}")


def _temporary(path: Path) -> Path:
    """A sibling name for atomic writes, keeping the suffix (formats are guessed from it)."""
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def write_video(frames: torch.Tensor, path: Path, fps: float) -> Path:
    """Write (3, F, H, W) frames in [-1, 1] as an H.264 (else MPEG-4) yuv420p mp4, atomically.

    Odd sizes are padded by one edge row / column. The file appears complete or not at all.
    """
    pixels = _pad_even(to_uint8(frames))  # (F, H', W', 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, codec = _temporary(path), _video_codec()
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = pixels.shape[2], pixels.shape[1], "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18"}  # near-transparent: a preview is looked at closely
            for array in pixels:
                frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))  # flush the encoder's delayed frames
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_contact_png(frames: torch.Tensor, path: Path, *, max_frames: int | None = None) -> Path:
    """The frames of (3, F, H, W) in [-1, 1] side by side, left to right, as one PNG (H, n*W), atomically.

    max_frames: keep at most this many, evenly spaced with the first and last (None = all F).
    """
    pixels = to_uint8(frames)  # (F, H, W, 3)
    num_frames = pixels.shape[0]
    if max_frames is not None and num_frames > max_frames:
        pixels = pixels[np.linspace(0, num_frames - 1, max(max_frames, 1)).round().astype(int)]
    strip = np.concatenate(list(pixels), axis=1)  # (H, n*W, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        Image.fromarray(strip).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --- previews during training ------------------------------------------------------------------------


def first_sample_conditions(
    enc: EncodedBatch, *, references_on: bool, mfi_on: bool
) -> tuple[torch.Tensor, References | None, torch.Tensor | None]:
    """(text (1, Lt, Dt), references, vit_features) of the batch's first sample, as training would see them
    without dropout; a condition asked for but not encoded in the batch is an error, not silently off."""
    references = vit = None
    if references_on:
        if enc.ref_latents is None:
            raise ValueError("preview with references, but the batch has no reference latents (encode with_refs)")
        references = References(latents=enc.ref_latents[:1], present=enc.ref_present[:1])
    if mfi_on:
        if enc.vit is None:
            raise ValueError("preview with MFI, but the batch has no ViT features (encode with_vit)")
        vit = enc.vit[:1]
    return enc.text[:1], references, vit


def _write_target(encoders: Encoders, enc: EncodedBatch, folder: Path, fps: float) -> None:
    """The first sample's latents decoded, once per sample (rewritten when the preview sample changes)."""
    record = folder / "target.json"
    sample_id = enc.sample_ids[0]
    if record.is_file() and json.loads(record.read_text()).get("sample_id") == sample_id:
        return
    frames = encoders.decode_video(enc.latents[:1])[0]  # (3, F, H, W)
    write_video(frames, folder / "target.mp4", fps)
    write_contact_png(frames, folder / "target.png", max_frames=CONTACT_FRAMES)
    record.write_text(json.dumps({"sample_id": sample_id}) + "\n")  # last: marks the pair complete


def render_preview(
    model: nn.Module, encoders: Encoders, enc: EncodedBatch, *, out_dir: Path, step: int, num_steps: int,
    shift: float, seed: int, fps: float, references_on: bool, mfi_on: bool, guidance: float = 1.0,
    null_text: torch.Tensor | None = None, autocast_dtype: torch.dtype | None = None, write: bool = True,
) -> Path:  # fmt: skip
    """Sample the first sample of `enc` with its own conditions and write the preview; returns the mp4 path.

    The same seed gives the same video. write=False samples without decoding or writing: under FSDP every
    rank must take part in the model's forward passes, while only the main rank writes.
    """
    folder = Path(out_dir) / PREVIEW_DIR
    path = folder / f"step_{step:08d}.mp4"
    text, references, vit = first_sample_conditions(enc, references_on=references_on, mfi_on=mfi_on)
    latents = sample_euler(
        model, shape=(1, *enc.latents.shape[1:]), text=text, references=references, vit_features=vit,
        num_steps=num_steps, shift=shift, generator=torch.Generator().manual_seed(seed), guidance=guidance,
        null_text=null_text, autocast_dtype=autocast_dtype,
    )  # fmt: skip
    if not write:
        return path
    frames = encoders.decode_video(latents)[0]  # (3, F, H, W) in [-1, 1]
    write_video(frames, path, fps)
    write_contact_png(frames, path.with_suffix(".png"), max_frames=CONTACT_FRAMES)
    _write_target(encoders, enc, folder, fps)
    return path
