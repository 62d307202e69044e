"""Helpers of the sampling, pipeline and generate tests."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

SMALL = {"num_frames": 5, "height": 32, "width": 48, "steps": 2, "progress": False}
"""Pipeline call settings small enough for a CPU test."""


def grey(seed: int = 0) -> Image.Image:
    """A 40 x 40 random-noise image: a reference crop without a face, which the pipeline takes as is."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))


def decode_mp4(path: Path) -> np.ndarray:
    """(F, H, W, 3) uint8 frames of a video file."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
