"""Clip quality scores: the cheap per-video measures taken during the scan.

Per-video measures (``QualityScan``, fed by ``datakit.video.job`` with every sampled frame, i.e. the
frames at ``sample_fps`` that go to the face stack). Only a few numbers per sampled frame and the last
small gray frame are kept, so memory does not grow with resolution or with frames held:

- ``motion_score``: mean optical-flow magnitude (OpenCV Farneback) between consecutive sampled frames of
  the same clip, measured on a gray copy ``FLOW_WIDTH_PX`` (160) wide and divided by that width and by the
  time between the two samples. Unit: **frame widths per second** (0.1 = the image content moves a tenth
  of the frame width per second), so it does not depend on the resolution or on ``sample_fps``. Null for
  a clip with fewer than two sampled frames.
- ``sharpness``: median over the clip's sampled frames of the variance of the Laplacian of the gray frame
  resized to ``SHARP_WIDTH_PX`` (320) wide; a fixed size, so a small (or upscaled) source scores lower.
- ``brightness``: mean luma (BT.601 gray), 0 = black, 1 = white, averaged over the clip's sampled frames.
- ``main_face_px``: median face size (px, sqrt of the box area, in source pixels) of the clip's main face,
  the track with most faces in the clip; null without faces.
- ``face_share``: share of the clip's sampled frames with at least one (tracked) face, 0..1.

The optional open_clip scores (``clip_score``, ``aesthetic_score``) need a model and the clip's caption:
they are a per-clip stage of their own (:mod:`datakit.clips.scores`, :mod:`datakit.clips.open_clip`).
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Sequence

import cv2
import numpy as np

FLOW_WIDTH_PX = 160  #: width of the gray copy optical flow is measured on
SHARP_WIDTH_PX = 320  #: width of the gray copy the Laplacian variance is measured on
# Farneback settings (pyramid scale, levels, window, iterations, poly_n, poly_sigma, flags): 4 levels at
# 160 px follow shifts of ~20 px between two samples (a fast pan at 3 fps).
_FARNEBACK = (0.5, 4, 15, 3, 5, 1.2, 0)


class QualityScan:
    """Per-sample measures of one video, aggregated per clip once the clips are known.

    Clip boundaries are final only after the scan (long shots are split afterwards), so each sampled
    frame leaves a few numbers (frame index, sharpness, brightness, motion from the previous sample);
    the only pixels kept are the previous sample's ``FLOW_WIDTH_PX`` gray copy.
    """

    def __init__(self) -> None:
        self.frame_index = array("q")
        self.sharpness = array("d")
        self.brightness = array("d")
        self.motion = array("d")  # frame widths per second from the previous sample; nan = none
        self.prev_index = array("q")  # frame index of the sample ``motion`` was measured against; -1 = none
        self._prev: tuple[int, float, np.ndarray] | None = None  # (frame index, t_s, small gray)

    def __len__(self) -> int:
        return len(self.frame_index)

    def add(self, index: int, t_s: float, frame_bgr: np.ndarray, *, cut: bool = False) -> None:
        """Measure one sampled frame; ``cut`` = it starts a new shot (no motion across a cut)."""
        gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
        mid = _resize_width(gray, SHARP_WIDTH_PX)
        small = _resize_width(mid, FLOW_WIDTH_PX)
        motion, prev_index = float("nan"), -1
        if self._prev is not None and not cut and t_s > self._prev[1] and self._prev[2].shape == small.shape:
            flow = cv2.calcOpticalFlowFarneback(self._prev[2], small, None, *_FARNEBACK)
            pixels = float(np.linalg.norm(flow, axis=-1).mean())
            motion, prev_index = pixels / FLOW_WIDTH_PX / (t_s - self._prev[1]), self._prev[0]
        self.frame_index.append(int(index))
        self.sharpness.append(float(cv2.Laplacian(mid, cv2.CV_64F).var()))
        self.brightness.append(float(mid.mean()) / 255.0)
        self.motion.append(motion)
        self.prev_index.append(prev_index)
        self._prev = (int(index), float(t_s), small)

    def clip_scores(
        self,
        clip_starts: Sequence[int],
        face_frame: Sequence[int],
        face_track: Sequence[object],
        face_px: Sequence[float],
    ) -> list[dict[str, float | None]]:
        """Scores of each clip; ``clip_starts`` = first frame of each clip (ascending), the faces as
        parallel sequences (frame index, track key, size px) of the faces kept in the manifest."""
        starts = np.asarray(clip_starts, dtype=np.int64)
        n = len(starts)
        index = np.frombuffer(self.frame_index, dtype=np.int64) if len(self) else np.zeros(0, np.int64)
        clip = np.searchsorted(starts, index, side="right") - 1
        prev = np.frombuffer(self.prev_index, dtype=np.int64) if len(self) else np.zeros(0, np.int64)
        prev_clip = np.where(prev >= 0, np.searchsorted(starts, prev, side="right") - 1, -2)
        sharp, bright = np.asarray(self.sharpness), np.asarray(self.brightness)
        motion = np.asarray(self.motion)
        pair_ok = (prev_clip == clip) & np.isfinite(motion)

        frames_with_face: dict[int, set[int]] = defaultdict(set)
        track_px: dict[tuple[int, object], list[float]] = defaultdict(list)
        f_clip = np.searchsorted(starts, np.asarray(face_frame, dtype=np.int64), side="right") - 1
        for c, frame, key, px in zip(f_clip.tolist(), face_frame, face_track, face_px, strict=True):
            frames_with_face[c].add(int(frame))
            track_px[(c, key)].append(float(px))
        main: dict[int, list[float]] = {}
        for (c, _), sizes in track_px.items():
            best = main.get(c)
            if best is None or (len(sizes), np.median(sizes)) > (len(best), np.median(best)):
                main[c] = sizes

        out = []
        for c in range(n):
            here = clip == c
            num = int(here.sum())
            pairs = motion[here & pair_ok]
            out.append(
                {
                    "motion_score": float(pairs.mean()) if pairs.size else None,
                    "sharpness": float(np.median(sharp[here])) if num else None,
                    "brightness": float(bright[here].mean()) if num else None,
                    "main_face_px": float(np.median(main[c])) if c in main else None,
                    "face_share": min(1.0, len(frames_with_face.get(c, ())) / num) if num else None,
                }
            )
        return out


def _resize_width(gray: np.ndarray, width: int) -> np.ndarray:
    h, w = gray.shape[:2]
    height = max(2, round(h * width / max(w, 1)))
    interp = cv2.INTER_AREA if w >= width else cv2.INTER_LINEAR
    return cv2.resize(gray, (width, height), interpolation=interp)
