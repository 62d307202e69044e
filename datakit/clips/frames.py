"""Frames for the per-clip stages (captions, open_clip scores): a few frames per clip, decoded once per video,
shrunk to a pixel budget."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from datakit.paths import UnsafePathError
from datakit.video.decode import DecodeStats, VideoError, iter_frames


@dataclass(slots=True)
class ClipSpan:
    """Where a clip lies in its video (decoded-frame indices, end exclusive)."""

    clip_id: str
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float


def frame_indices(start: int, end: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``[start, end)`` (fewer when the clip is shorter)."""
    n = max(0, end - start)
    if n == 0:
        return []
    count = min(count, n)
    # centres of `count` equal parts: never the first/last frame, which can straddle a cut
    return sorted({start + min(n - 1, int((i + 0.5) * n / count)) for i in range(count)})


def fit_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """Shrink (never enlarge) so that width * height <= ``max_pixels``, keeping the aspect ratio."""
    w, h = image.size
    if max_pixels <= 0 or w * h <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (w * h))
    return image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)


def sample_clip_frames(
    path: str | Path, clips: list[ClipSpan], count: int, max_pixels: int, fps_hint: float = 25.0
) -> dict[str, list[Image.Image] | VideoError]:
    """Decode ``path`` once, front to back (no seeking), and keep ``count`` frames per clip.

    Returns per clip id its RGB frames, or the :class:`VideoError` that stopped decoding before the
    clip's frames were reached (a clip whose frames all came is fine even if the file breaks later).
    """
    wanted: dict[int, list[str]] = {}
    for c in clips:
        for i in frame_indices(c.start_frame, c.end_frame, count):
            wanted.setdefault(i, []).append(c.clip_id)
    frames: dict[str, list[Image.Image]] = {c.clip_id: [] for c in clips}
    last = max(wanted) if wanted else -1
    stats = DecodeStats()
    if last >= 0:
        for frame in iter_frames(path, fps_hint, stats):
            ids = wanted.get(frame.index)
            if ids:
                image = fit_pixels(Image.fromarray(np.ascontiguousarray(frame.bgr()[:, :, ::-1])), max_pixels)
                for clip_id in ids:
                    frames[clip_id].append(image)
            if frame.index >= last:
                break
    out: dict[str, list[Image.Image] | VideoError] = {}
    for c in clips:
        expected = len(frame_indices(c.start_frame, c.end_frame, count))
        got = frames[c.clip_id]
        if expected and len(got) == expected:
            out[c.clip_id] = got
        elif stats.error is not None:
            out[c.clip_id] = VideoError("caption", stats.error.error_type, stats.error.message)
        else:
            out[c.clip_id] = VideoError(
                "caption",
                "MissingFrames",
                f"decoded {len(got)} of the clip's {expected} sampled frames "
                f"(frames {c.start_frame}-{c.end_frame} of a {stats.num_frames}-frame decode)",
            )
    return out


def frames_for_items(items: list[dict], count: int, max_pixels: int) -> dict[str, list[Image.Image] | BaseException]:
    """Per clip id, ``count`` RGB frames (or the error that stopped them) for work items carrying
    ``clip_id``, ``video_path``, ``fps``, ``start_frame``, ``end_frame``, ``start_s``, ``end_s``: each video
    is decoded once for all its clips in the batch; a decoder crash on one file fails its clips only."""
    by_video: dict[str, list[dict]] = {}
    decoded: dict[str, list[Image.Image] | BaseException] = {}
    for item in items:
        if item.get("path_error"):  # an unsafe manifest path (datakit.paths): this clip fails, the rest run
            decoded[str(item["clip_id"])] = UnsafePathError(str(item["path_error"]))
        else:
            by_video.setdefault(str(item["video_path"]), []).append(item)
    for path, group in by_video.items():
        spans = [
            ClipSpan(str(g["clip_id"]), int(g["start_frame"]), int(g["end_frame"]), g["start_s"], g["end_s"])
            for g in group
        ]
        try:
            decoded.update(sample_clip_frames(path, spans, count, max_pixels, float(group[0]["fps"] or 25)))
        except Exception as exc:
            decoded.update({s.clip_id: exc for s in spans})
    return decoded
