"""Multi-level Feature Injection: the ViT feature source (an open_clip vision tower) and the projector
that turns its features into the image tokens every block cross-attends to."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from datakit.clips.open_clip import CLIP_MEAN, CLIP_STD, OpenClipFolder
from harmoview.model.config import DiTConfig


class MFIProjector(nn.Module):
    """ViT features of each identity's frontal reference -> image-context tokens for every block.

    Multi-level features arrive concatenated channel-wise (B, N, T, vit_dim * levels). An identity
    embedding tells the blocks which identity a token describes; a learnable null token is always
    present so that image attention is defined when no identity has a frontal view.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        in_dim = config.vit_dim * config.vit_num_levels
        self.norm_in = nn.LayerNorm(in_dim, eps=config.eps)
        self.proj = nn.Sequential(nn.Linear(in_dim, config.dim), nn.GELU(), nn.Linear(config.dim, config.dim))
        self.norm_out = nn.LayerNorm(config.dim, eps=config.eps)
        self.identity_embedding = nn.Parameter(torch.randn(config.max_identities, config.dim) * 0.02)
        self.null_token = nn.Parameter(torch.randn(1, config.dim) * 0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, N, T, Cv) -> image context (B, 1 + N*T, D), null token first."""
        b, n = features.shape[:2]
        x = self.norm_out(self.proj(self.norm_in(features)))  # (B, N, T, D)
        x = x + self.identity_embedding[:n, None].to(x.dtype)  # (B, N, T, D)
        null = self.null_token.to(x.dtype).expand(b, -1, -1)  # (B, 1, D)
        return torch.cat([null, x.flatten(1, 2)], dim=1)  # (B, 1 + N*T, D)


class ViTFeatures(nn.Module):
    """A frozen open_clip vision tower returning its tokens at several depths, concatenated channel-wise."""

    def __init__(self, visual: nn.Module, layer_indices: Sequence[int], mean=CLIP_MEAN, std=CLIP_STD) -> None:
        super().__init__()
        self.visual = visual.eval().requires_grad_(False)
        self.layer_indices = list(layer_indices)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.visual.image_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] at the tower's image size -> (B, 1 + T, width * levels)."""
        x = (images - self.mean) / self.std
        out = self.visual.forward_intermediates(
            x, indices=self.layer_indices, intermediates_only=True, output_fmt="NLC", output_extra_tokens=True
        )
        # Keep the class token: it summarises the whole face, patch tokens carry local detail.
        levels = [
            torch.cat([cls, tok], dim=1)
            for cls, tok in zip(out["image_intermediates_prefix"], out["image_intermediates"], strict=True)
        ]
        return torch.cat(levels, dim=-1)  # (B, 1 + T, width * levels)

    def encode_identities(self, frontal: torch.Tensor) -> torch.Tensor:
        """frontal (B, N, 3, H, W) -> (B, N, 1 + T, width * levels), the model's `vit_features`."""
        b, n = frontal.shape[:2]
        return self(frontal.flatten(0, 1)).unflatten(0, (b, n))


def load_vit(source: str | Path | dict, layer_indices: Sequence[int] = (-2,)) -> ViTFeatures:
    """Build an open_clip vision tower and wrap it for multi-depth features.

    source: an open_clip folder in the hub layout, read by `datakit.clips.open_clip.OpenClipFolder`
    (`open_clip_config.json` beside `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`; only the
    `visual.*` weights are loaded), or a dict of `CLIPVisionCfg` fields for a randomly initialised tower
    (tests). Never downloads.
    layer_indices: block indices whose outputs are taken (negative counts from the last block).
    """
    from open_clip.model import _build_vision_tower  # the one place we build a tower from a config

    if isinstance(source, dict):
        visual = _build_vision_tower(embed_dim=source.get("width", 768), vision_cfg=dict(source))
        return ViTFeatures(visual, _absolute(layer_indices, source.get("layers", 12)))

    files = OpenClipFolder.find(source, hint="the --vit folder of the MFI ViT")  # config + weights, or a clear error
    model_cfg = files.model_cfg
    visual = _build_vision_tower(
        embed_dim=model_cfg["embed_dim"], vision_cfg=model_cfg["vision_cfg"],
        quick_gelu=model_cfg.get("quick_gelu", False),
    )  # fmt: skip
    files.load_into(visual, prefix="visual.")  # the text tower's keys are not needed for image features
    num_layers = model_cfg["vision_cfg"].get("layers", 12)
    mean, std = files.preprocess_cfg.get("mean", CLIP_MEAN), files.preprocess_cfg.get("std", CLIP_STD)
    return ViTFeatures(visual, _absolute(layer_indices, num_layers), mean=mean, std=std)


def _absolute(indices: Sequence[int], num_layers: int) -> list[int]:
    return [i % num_layers for i in indices]
