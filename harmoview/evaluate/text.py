"""Text alignment (CLIP score): cosine between a prompt and sampled frames under a local open_clip model.

The model is a full open_clip CLIP (vision and text towers) built from a local open_clip folder in the hub
layout, found and read by :class:`datakit.clips.open_clip.OpenClipFolder` (``open_clip_config.json`` beside
``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``). Nothing is downloaded; the tokenizer
is open_clip's bundled BPE vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datakit.clips.open_clip import CLIP_MEAN, CLIP_STD, OpenClipFolder


class ClipScorer:
    """A frozen open_clip model that scores how well frames match a prompt (mean cosine over frames)."""

    def __init__(self, folder: str | Path) -> None:
        from open_clip.model import CLIP
        from open_clip.tokenizer import SimpleTokenizer

        files = OpenClipFolder.find(folder, hint="the --clip folder")  # config + weights, or a clear error
        model_cfg, pre = files.model_cfg, files.preprocess_cfg
        self.model = CLIP(
            embed_dim=model_cfg["embed_dim"], vision_cfg=model_cfg["vision_cfg"], text_cfg=model_cfg["text_cfg"],
            quick_gelu=model_cfg.get("quick_gelu", False),
        ).eval()  # fmt: skip
        files.load_into(self.model)
        self.name = files.name
        self.tokenizer = SimpleTokenizer(context_length=model_cfg["text_cfg"].get("context_length", 77))
        self.mean = torch.tensor(pre.get("mean", CLIP_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("std", CLIP_STD)).view(1, 3, 1, 1)
        size = self.model.visual.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)

    def _pixels(self, frames_bgr: list[np.ndarray]) -> torch.Tensor:
        """BGR frames -> (N, 3, H, W) normalised, short side resized and centre-cropped to the tower's size."""
        images = torch.from_numpy(np.stack([f[..., ::-1].copy() for f in frames_bgr])).permute(0, 3, 1, 2)
        images = images.float() / 255.0  # (N, 3, h, w)
        h, w = images.shape[-2:]
        scale = max(self.image_size[0] / h, self.image_size[1] / w)
        images = F.interpolate(images, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
        top = (images.shape[-2] - self.image_size[0]) // 2
        left = (images.shape[-1] - self.image_size[1]) // 2
        images = images[..., top : top + self.image_size[0], left : left + self.image_size[1]]
        return (images - self.mean) / self.std

    @torch.no_grad()
    def score(self, prompt: str, frames_bgr: list[np.ndarray]) -> float | None:
        """Mean cosine between the prompt and each frame (None without frames)."""
        if not frames_bgr:
            return None
        image = F.normalize(self.model.encode_image(self._pixels(frames_bgr)), dim=-1)  # (N, E)
        text = F.normalize(self.model.encode_text(self.tokenizer([prompt])), dim=-1)  # (1, E)
        return float((image @ text.T).mean())
