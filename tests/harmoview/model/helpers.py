"""Helpers shared by the HarmoView model tests: tiny-config inputs and trained-looking weights."""

from __future__ import annotations

import torch

from harmoview import DiTConfig, HarmoViewDiT, References, is_harmoview_param

# Video latents (B, C, F, H, W) for the tiny config: 3 latent frames of 8x8 -> 3*4*4 = 48 tokens.
VIDEO_SHAPE = (2, 4, 3, 8, 8)
TEXT_TOKENS = 7
VIT_TOKENS = 5


def pretrained_like(model: HarmoViewDiT, std: float = 0.05) -> HarmoViewDiT:
    """Perturb every backbone parameter, as a trained checkpoint would differ from the init.

    The zero-initialised head would otherwise hide every difference in the blocks.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not is_harmoview_param(name):
                p.add_(torch.randn_like(p) * std)
    return model


def video_inputs(config: DiTConfig, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(video, timesteps, text) for the tiny config."""
    video = torch.randn(batch, config.in_channels, *VIDEO_SHAPE[2:])
    timesteps = torch.tensor([999.0, 250.5][:batch])
    text = torch.randn(batch, TEXT_TOKENS, config.text_dim)
    return video, timesteps, text


def make_references(config: DiTConfig, present: list[list[list[bool]]]) -> References:
    """Random reference latents with the given presence mask (B, N, S)."""
    mask = torch.tensor(present, dtype=torch.bool)
    b, n, s = mask.shape
    latents = torch.randn(b, n, s, config.in_channels, *config.ref_latent_hw)
    return References(latents=latents, present=mask)


def vit_features(config: DiTConfig, batch: int, num_identities: int) -> torch.Tensor:
    return torch.randn(batch, num_identities, VIT_TOKENS, config.vit_dim * config.vit_num_levels)
