"""From a data batch to the model's inputs: encoding (or cached encodings), dropout, noise.

A batch from `harmoview.data.dataset.TrainDataset` holds pixels; a batch from `harmoview.train.cache` holds what the
frozen encoders made of them (`EncodedBatch`). Both end up as the same `EncodedBatch`, so training
reads the cache or encodes on the fly through one code path. Randomness (sigma, noise, dropout) comes
from one generator per sample seeded by (seed, stream, step, micro-batch, sample_id): a resumed run, another
world size or another batch layout draws the same numbers for the same sample at the same step. The stream is
the stage (its recipe name), so that stages 3 and 4 do not replay each other's draws for the same sample.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from harmoview.data.video_io import to_unit_range
from harmoview.flow import add_noise, sample_sigma, timesteps, velocity_target
from harmoview.model.config import FRONTAL_SLOT
from harmoview.model.encoders import Encoders
from harmoview.model.references import References
from harmoview.train.dropout import ViewDropout


@dataclass
class EncodedBatch:
    """Encoder outputs of a batch (what `harmoview cache` stores per sample)."""

    sample_ids: list[str]
    latents: torch.Tensor
    """(B, C, f, h, w) normalised VAE latents of the target clips."""
    text: torch.Tensor
    """(B, Lt, Dt) umT5 features of the captions (zero past each caption's length)."""
    ref_present: torch.Tensor
    """(B, N, S) bool: reference views that exist."""
    ref_latents: torch.Tensor | None = None
    """(B, N, S, C, h', w') latents of the reference crops (zeros where absent); None = not encoded."""
    vit: torch.Tensor | None = None
    """(B, N, T, Dv) ViT features of each identity's frontal crop (zeros without one); None = not encoded."""

    def to(self, device: torch.device) -> EncodedBatch:
        """The same batch with every tensor on `device`."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return EncodedBatch(
            self.sample_ids, move(self.latents), move(self.text), move(self.ref_present),
            move(self.ref_latents), move(self.vit),
        )  # fmt: skip


@dataclass
class TrainInputs:
    """One micro-batch ready for `model(noisy, t, text, references, vit_features)` and the loss target."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    text: torch.Tensor
    references: References | None
    vit_features: torch.Tensor | None
    target: torch.Tensor
    num_text_dropped: int
    """Samples whose caption was replaced by the empty prompt (text dropout or an unconditional micro-batch)."""
    num_views_present: int
    """Reference views the samples have (before view dropout; 0 when references are off)."""
    num_views_kept: int
    """Reference views given to the model after view dropout (0 when references are off)."""
    timestep_values: list[float]
    """The timesteps as Python floats (read without a device synchronisation)."""


def seed_for(*parts: object) -> int:
    """A 63-bit seed from any values (stable across processes, unlike Python's hash())."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from `parts` (e.g. seed, step, micro-batch, purpose): draws that resume exactly."""
    return torch.Generator().manual_seed(seed_for(*parts))


@torch.no_grad()
def encode_batch(batch: dict, encoders: Encoders, *, with_refs: bool, with_vit: bool) -> EncodedBatch:
    """Encode a pixel batch of `TrainDataset` on the encoders' device."""
    device = encoders.device
    video = batch["video"].to(device)  # (B, 3, F, H, W) uint8 from the loader, or float in [-1, 1]
    video = to_unit_range(video) if video.dtype == torch.uint8 else video
    latents = encoders.encode_video(video)  # (B, C, f, h, w)
    text = encoders.encode_text(batch["captions"])  # (B, Lt, Dt)
    present = batch["ref_present"].to(device)  # (B, N, S)
    ref_latents = vit = None
    if with_refs:
        pixels = batch["ref_pixels"].to(device)  # (B, N, S, 3, h, w)
        codes = encoders.encode_images(pixels[present])  # (M, C, h', w'): present views only
        ref_latents = codes.new_zeros(*present.shape, *codes.shape[1:])  # (B, N, S, C, h', w')
        ref_latents[present] = codes
    if with_vit:
        frontal_ok = present[:, :, FRONTAL_SLOT]  # (B, N)
        frontal = batch["ref_pixels"][:, :, FRONTAL_SLOT].to(device)  # (B, N, 3, h, w)
        feats = encoders.encode_vit(frontal[frontal_ok]) if frontal_ok.any() else None  # (M, T, Dv)
        shape = (*frontal_ok.shape, *encoders.vit_feature_shape)
        vit = torch.zeros(shape, device=device, dtype=latents.dtype)  # (B, N, T, Dv)
        if feats is not None:
            vit[frontal_ok] = feats.to(vit.dtype)
    return EncodedBatch(list(batch["sample_ids"]), latents, text, present, ref_latents, vit)


def make_inputs(
    enc: EncodedBatch, *, empty_text: torch.Tensor, dropout: ViewDropout, refs_on: bool, mfi_on: bool,
    shift: float, sigma_range: tuple[float, float], seed: int, step: int, micro: int, stream: str = "",
    uncond: bool = False,
) -> TrainInputs:  # fmt: skip
    """Noise the latents and apply dropout; `empty_text` (Lt, Dt) are the features of the empty prompt.

    `stream` names the stage (its recipe) in the seeds; `uncond` = an unconditional micro-batch (every
    caption empty; references must be off). The same random numbers are drawn whatever the outcome.
    """
    if uncond and refs_on:
        raise ValueError("an unconditional micro-batch has no references")
    sigmas, noises, texts, kept, num_dropped = [], [], [], [], 0
    present = enc.ref_present.cpu() if refs_on else None  # (B, N, S)
    for i, sample_id in enumerate(enc.sample_ids):
        g = generator(seed, stream, step, micro, sample_id)
        sigmas.append(sample_sigma(g, shift, sigma_range))
        noises.append(torch.randn(enc.latents.shape[1:], generator=g))
        drop_text = dropout.drop_text(g) or uncond
        num_dropped += drop_text
        texts.append(empty_text if drop_text else enc.text[i])
        kept.append(dropout.drop_views(present[i], g) if refs_on else None)
    device = enc.latents.device
    sigma_cpu = torch.tensor(sigmas)  # (B,)
    sigma = sigma_cpu.to(device)  # (B,)
    noise = torch.stack(noises).to(device, enc.latents.dtype)  # (B, C, f, h, w)
    references = vit = None
    num_present = num_kept = 0
    if refs_on:
        if enc.ref_latents is None:
            raise ValueError("references are on but the batch has no reference latents")
        kept_mask = torch.stack(kept)  # (B, N, S) on the CPU
        num_present, num_kept = int(present.sum()), int(kept_mask.sum())
        references = References(latents=enc.ref_latents, present=kept_mask.to(device))
        if mfi_on:
            vit = enc.vit
    return TrainInputs(
        noisy=add_noise(enc.latents, noise, sigma), timesteps=timesteps(sigma), text=torch.stack(texts),
        references=references, vit_features=vit, target=velocity_target(enc.latents, noise),
        num_text_dropped=num_dropped, num_views_present=num_present, num_views_kept=num_kept,
        timestep_values=timesteps(sigma_cpu).tolist(),
    )  # fmt: skip
