"""Preview videos during training: a few sampling steps of the flow ODE, decoded and written as mp4 + PNG.

`render_preview` samples the first sample of a training batch with that sample's conditions through
`harmoview.sampling.sample` (the one sampler of the project), and writes
`<out>/previews/step_XXXXXXXX.mp4` and a `.png` contact sheet beside it, plus the sample's ground truth
(its latents decoded) once as `target.mp4` / `target.png`, to compare against.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from harmoview.data.video_io import write_contact_png, write_video
from harmoview.model.encoders import Encoders
from harmoview.model.references import References
from harmoview.sampling import Conditions, Guidance, sample
from harmoview.train.inputs import EncodedBatch

PREVIEW_DIR = "previews"
CONTACT_FRAMES = 16
"""Most frames on a preview's contact sheet (evenly spaced): 81 frames side by side is unreadable."""


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
    if guidance != 1.0 and null_text is None:
        raise ValueError(f"guidance {guidance} needs null_text (the empty prompt's features)")
    negative = text if null_text is None else null_text.to(text.device, text.dtype).expand_as(text)  # (1, Lt, Dt)
    cond = Conditions(text=text, negative_text=negative, references=references, vit_features=vit)
    latents = sample(
        model, cond, shape=(1, *enc.latents.shape[1:]), num_steps=num_steps, shift=shift,
        generator=torch.Generator().manual_seed(seed), guidance=Guidance(text_scale=guidance),
        autocast_dtype=autocast_dtype,
    )  # Euler, text guidance only  # fmt: skip
    if not write:
        return path
    frames = encoders.decode_video(latents)[0]  # (3, F, H, W) in [-1, 1]
    write_video(frames, path, fps)
    write_contact_png(frames, path.with_suffix(".png"), max_frames=CONTACT_FRAMES)
    _write_target(encoders, enc, folder, fps)
    return path
