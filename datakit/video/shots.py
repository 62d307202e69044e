"""Shot boundaries, streamed: PySceneDetect's content detector fed with our decoded frames.

Frames are downscaled before scoring (cuts are a global colour/luma change, resolution adds nothing
but cost). The shots are then cut into clips no longer than ``max_clip_s``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np
from scenedetect import ContentDetector
from scenedetect.common import FrameTimecode

SCORE_WIDTH = 160  # pixels; PySceneDetect's own downscale picks a similar size for SD footage


@dataclass(slots=True)
class Segment:
    """A frame range ``[start_frame, end_frame)`` with its times."""

    start_frame: int
    end_frame: int
    start_s: float
    end_s: float

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


class ShotDetector:
    """Online shot detector: call :meth:`push` on every frame in order, then :meth:`segments`."""

    def __init__(self, fps: float, *, threshold: float = 27.0, min_shot_s: float = 0.5) -> None:
        self.fps = fps
        self._detector = ContentDetector(threshold=threshold, min_scene_len=max(1, round(min_shot_s * fps)))
        self._cuts: list[int] = []
        self._times: dict[int, float] = {}
        self._last_index = -1
        self._last_t = 0.0

    def push(self, index: int, t_s: float, frame_bgr: np.ndarray) -> bool:
        """Score one frame (ideally already ``SCORE_WIDTH`` wide); True when a new shot starts at it."""
        h, w = frame_bgr.shape[:2]
        small = frame_bgr
        if w > SCORE_WIDTH:
            small = cv2.resize(
                frame_bgr, (SCORE_WIDTH, max(1, round(h * SCORE_WIDTH / w))), interpolation=cv2.INTER_AREA
            )
        self._times[index] = t_s
        self._last_index, self._last_t = index, t_s
        found = self._detector.process_frame(FrameTimecode(index, fps=self.fps), small)
        self._cuts.extend(int(tc.frame_num) for tc in found)
        return bool(found)

    @property
    def last_cut(self) -> int:
        """Frame index where the current shot started (0 before any cut)."""
        return self._cuts[-1] if self._cuts else 0

    def segments(self) -> list[Segment]:
        """The shots seen so far, covering every pushed frame."""
        if self._last_index < 0:
            return []
        end = self._last_index + 1
        end_t = self._last_t + 1.0 / self.fps
        bounds = [0, *sorted(c for c in set(self._cuts) if 0 < c < end), end]
        return [
            Segment(a, b, self._times.get(a, a / self.fps), self._times.get(b, end_t) if b < end else end_t)
            for a, b in itertools.pairwise(bounds)
        ]


def split_long(segments: list[Segment], fps: float, max_clip_s: float) -> list[Segment]:
    """Cut shots longer than ``max_clip_s`` into equal pieces no longer than it."""
    out: list[Segment] = []
    for seg in segments:
        duration = seg.end_s - seg.start_s
        pieces = max(1, int(np.ceil(duration / max_clip_s - 1e-9))) if max_clip_s > 0 else 1
        edges = np.linspace(seg.start_frame, seg.end_frame, pieces + 1).round().astype(int)
        for a, b in itertools.pairwise(edges):
            frac_a = (a - seg.start_frame) / max(seg.num_frames, 1)
            frac_b = (b - seg.start_frame) / max(seg.num_frames, 1)
            out.append(Segment(int(a), int(b), seg.start_s + frac_a * duration, seg.start_s + frac_b * duration))
    return out
