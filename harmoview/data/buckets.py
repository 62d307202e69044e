"""Training buckets: which frame count and resolution a clip is trained at, chosen from metadata alone.

A batch holds samples of one bucket, so every tensor in it has one shape. The choice is a pure function
of the clip's length, the video's fps and aspect ratio and the :class:`DataConfig`, with no decoding:
the same sample always gets the same frames (which is what makes latents cacheable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harmoview.model.config import VIEW_SLOTS


@dataclass(frozen=True, slots=True)
class Bucket:
    """One training shape: ``num_frames`` pixel frames (4k+1, the VAE's temporal stride) of ``height`` x ``width``."""

    num_frames: int
    height: int
    width: int


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """What the data loader produces: buckets, frame rate, reference views and batch size."""

    frame_counts: tuple[int, ...] = (81, 49, 17)
    """Candidate frame counts, each 4k+1; a clip gets the largest one that fits."""
    resolutions: tuple[tuple[int, int], ...] = ((480, 832), (832, 480), (480, 480))
    """Candidate (height, width); a clip gets the one closest to its aspect ratio."""
    fps: float = 16.0
    """Frames are sampled at this rate (source frames step by src_fps / fps, at least 1)."""
    ref_size: tuple[int, int] = (256, 256)
    """Reference crop pixels (h, w) = the model's ref_latent_hw times the VAE's spatial stride."""
    views: tuple[str, ...] = VIEW_SLOTS
    """View slots to load; the others are absent (stages 1-2: ("frontal",))."""
    require_views: tuple[str, ...] = ()
    """The main identity must have a reference in each of these views, else the sample is left out."""
    max_identities: int = 1
    """Identities per sample, main subject first (the order of the samples table)."""
    batch_size: int = 1
    """Samples per batch (one bucket per batch)."""
    seed: int = 0
    """Seed of the per-epoch sample order."""

    def __post_init__(self) -> None:
        if not self.frame_counts or any(f < 1 or (f - 1) % 4 for f in self.frame_counts):
            raise ValueError(f"frame_counts must be 4k+1 (1, 5, ..., 81), got {self.frame_counts}")
        if not self.resolutions or any(h < 1 or w < 1 for h, w in self.resolutions):
            raise ValueError(f"resolutions must be positive (h, w) pairs, got {self.resolutions}")
        unknown = [v for v in (*self.views, *self.require_views) if v not in VIEW_SLOTS]
        if unknown or not self.views:
            raise ValueError(f"views must be a non-empty subset of {VIEW_SLOTS}, got unknown {unknown}")
        if missing := [v for v in self.require_views if v not in self.views]:
            raise ValueError(f"require_views {missing} are not loaded: add them to views {self.views}")
        if self.fps <= 0 or self.max_identities < 1 or self.batch_size < 1:
            raise ValueError("fps, max_identities and batch_size must be positive")


def frame_stride(video_fps: float, fps: float) -> float:
    """Source frames between two sampled frames; never below 1 (a slow video is not upsampled)."""
    return max(1.0, video_fps / fps)


def span(num_frames: int, stride: float) -> int:
    """Source frames covered by ``num_frames`` samples ``stride`` apart (first and last included)."""
    return _round(stride * (num_frames - 1)) + 1


def choose_bucket(config: DataConfig, *, clip_frames: int, video_fps: float, width: int, height: int) -> Bucket | None:
    """The bucket of a clip, or None when it is shorter than the smallest frame count allows."""
    stride = frame_stride(video_fps, config.fps)
    fitting = [f for f in config.frame_counts if span(f, stride) <= clip_frames]
    if not fitting:
        return None
    aspect = math.log(height / width)
    h, w = min(config.resolutions, key=lambda hw: abs(math.log(hw[0] / hw[1]) - aspect))  # first of ties
    return Bucket(num_frames=max(fitting), height=h, width=w)


def window(start_frame: int, end_frame: int, num_frames: int, stride: float, focus: int | None = None) -> list[int]:
    """Source frame numbers of ``num_frames`` samples centred on ``focus`` (default: the clip's middle),
    kept inside the clip ``[start_frame, end_frame)``.

    The trainer passes the middle of the main subject's time on screen: a shot may outlast its person
    (the foreman walks out of his clip), and a window at the clip's middle would then show no one.

    Positions are rounded from a fractional stride so the sampled rate is exactly ``fps`` on average
    (e.g. 25 fps -> 16 fps steps 1.5625 source frames), rather than a whole-frame stride that would
    play back too fast or too slow.
    """
    length = span(num_frames, stride)
    first = start_frame + (end_frame - start_frame - length) // 2
    if focus is not None:
        first = min(max(focus - length // 2, start_frame), end_frame - length)
    return [first + _round(k * stride) for k in range(num_frames)]


def _round(x: float) -> int:
    # Half up, not Python's half-to-even: the frame choice must not depend on the parity of an index.
    return math.floor(x + 0.5)
