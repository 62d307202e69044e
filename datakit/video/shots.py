"""Shot boundaries and clips, streamed: PySceneDetect's content detector fed with our decoded frames.

Frames are downscaled before scoring (cuts are a global colour/luma change, resolution adds nothing
but cost). :class:`ClipCutter` cuts the shots into clips no longer than ``max_clip_s`` *while the frames
stream*: a new clip starts at every cut the detector reports and, inside a shot, at the first frame that
would take its clip past ``max_clip_s``. Every clip start is known on the frame where it happens,
so the frame loop restarts everything per clip (tracker, sampling clock, motion) exactly there, and a
long single shot can be split into work items at any clip start with the tables of an unsplit run
(datakit.video.segments). The last clip of a long shot holds what is left (it may be short; the clip
filters and ``min_sample_s`` decide what it is worth); continuity of a person across a length split is a
join in the global pass (datakit.passes.consolidate), the same however the video was cut into work items.
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
    shot: int = 0  # the shot the range belongs to (clips of one shot split for length share it)

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
        return self.decide(index, t_s, self.score(index, frame_bgr))

    def score(self, index: int, frame_bgr: np.ndarray) -> float:
        """PySceneDetect's content score of a frame against the frame scored before it (0.0 for the first).

        A function of the two frames only, so ranges of a video can be scored apart, each from the frame
        before its first (datakit.video.segments), and :meth:`decide` then run over the scores in order."""
        h, w = frame_bgr.shape[:2]
        small = frame_bgr
        if w > SCORE_WIDTH:
            small = cv2.resize(
                frame_bgr, (SCORE_WIDTH, max(1, round(h * SCORE_WIDTH / w))), interpolation=cv2.INTER_AREA
            )
        return self._detector._calculate_frame_score(FrameTimecode(index, fps=self.fps), small)

    def decide(self, index: int, t_s: float, score: float) -> bool:
        """Feed one frame's score, in frame order; True when a new shot starts at it. What
        ``ContentDetector.process_frame`` does after scoring: its flash filter (``min_shot_s``) on the
        threshold."""
        self._times[index] = t_s
        self._last_index, self._last_t = index, t_s
        found = self._detector._flash_filter.filter(
            timecode=FrameTimecode(index, fps=self.fps), above_threshold=score >= self._detector._threshold
        )
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


class ClipCutter:
    """Online clip boundaries: call :meth:`push` on every frame in order, then :meth:`clips`.

    ``push`` answers whether a new clip starts at the frame (a reported cut, or a length split): the frames
    where the frame loop restarts its per-clip state. A cut the detector reports late (its flash filter
    merges close cuts) starts its shot at the cut frame, but the restart happens on the reporting frame;
    length splits are then counted from the cut frame's time, and a split point that falls before the
    report moves on by ``max_clip_s``, so the answer never depends on a frame not yet seen. Each split is
    counted from the frame where the clip before it started, so no clip exceeds ``max_clip_s``.
    """

    def __init__(self, fps: float, *, threshold: float = 27.0, min_shot_s: float = 0.5, max_clip_s: float = 0.0):
        self.shots = ShotDetector(fps, threshold=threshold, min_shot_s=min_shot_s)
        self.max_clip_s = max_clip_s
        self.splits: list[int] = []  # length-split frames, in order
        self.restarts: list[int] = []  # every frame where push answered True after the first
        self._next_split_t: float | None = None

    @classmethod
    def from_config(cls, fps: float, cfg) -> ClipCutter:
        return cls(fps, threshold=cfg.shot_threshold, min_shot_s=cfg.min_shot_s, max_clip_s=cfg.max_clip_s)

    def push(self, index: int, t_s: float, frame_bgr: np.ndarray) -> bool:
        """Score one frame; True when a new clip starts at it (a cut reported on it, or a length split)."""
        return self.push_score(index, t_s, self.shots.score(index, frame_bgr))

    def push_score(self, index: int, t_s: float, score: float) -> bool:
        """:meth:`push` for a frame already scored (:meth:`ShotDetector.score`)."""
        first = self.shots._last_index < 0
        cut = self.shots.decide(index, t_s, score)
        if first or cut:
            start_t = self.shots._times[self.shots.last_cut] if cut else t_s
            self._schedule(start_t, t_s)
        elif self._next_split_t is not None and t_s + 1.0 / self.shots.fps > self._next_split_t + 1e-6:
            self.splits.append(index)
            self._schedule(t_s, t_s)
        else:
            return False
        if not first:
            self.restarts.append(index)
        return not first

    def _schedule(self, from_t: float, now_t: float) -> None:
        """The next length split: ``max_clip_s`` after ``from_t`` (the clip's start; a late-reported cut: the
        cut frame's time), moved on by whole ``max_clip_s`` while the frame ``now_t`` is already past it."""
        if self.max_clip_s <= 0:
            return
        step = self.max_clip_s
        nxt = from_t + step
        if nxt <= now_t + 1.0 / self.shots.fps:
            nxt += step * np.floor((now_t + 1.0 / self.shots.fps - nxt) / step + 1)
        self._next_split_t = nxt

    def clips(self) -> list[Segment]:
        """The clips of every pushed frame, each with its shot number."""
        shots = self.shots.segments()
        if not shots:
            return []
        times = self.shots._times
        end_t = shots[-1].end_s
        out: list[Segment] = []
        splits = sorted(self.splits)
        for no, shot in enumerate(shots):
            inner = [f for f in splits if shot.start_frame < f < shot.end_frame]
            for a, b in itertools.pairwise([shot.start_frame, *inner, shot.end_frame]):
                t_b = times.get(b, end_t) if b < shots[-1].end_frame else end_t
                out.append(Segment(a, b, times.get(a, shot.start_s), t_b, no))
        return out
