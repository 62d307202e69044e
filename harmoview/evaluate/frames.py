"""Frames of a generated video, sampled at a fixed rate by one sequential PyAV decode (no seeking).

Each sample also keeps the decoded frame right after it, downscaled to grey, so that motion is measured
between adjacent frames whatever the sampling rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from datakit.video.decode import quarter_turns, upright

FLOW_WIDTH_PX = 256  #: frames are downscaled to this width before optical flow (motion is in these pixels)


@dataclass(slots=True)
class SampledFrame:
    """One sampled frame: BGR pixels, its time, and the next decoded frame in grey at flow width."""

    index: int
    t_s: float
    bgr: np.ndarray  # (H, W, 3) uint8
    next_grey: np.ndarray | None = None  # (h, FLOW_WIDTH_PX) uint8; None for the video's last frame


def flow_grey(bgr: np.ndarray) -> np.ndarray:
    """A frame downscaled to ``FLOW_WIDTH_PX`` wide, in grey: the input of optical flow."""
    height, width = bgr.shape[:2]
    size = (FLOW_WIDTH_PX, max(8, round(height * FLOW_WIDTH_PX / width)))
    return cv2.cvtColor(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)


def _upright_bgr(frame: av.VideoFrame) -> np.ndarray:
    """The frame as displayed: phone footage stores pixels sideways with a rotation in its metadata."""
    return upright(frame.to_ndarray(format="bgr24"), quarter_turns(frame.rotation))


def sample_frames(path: str | Path, sample_fps: float = 4.0, max_frames: int = 64) -> list[SampledFrame]:
    """Frames of ``path`` every ``1 / sample_fps`` seconds (at most ``max_frames``), decoded in order."""
    if sample_fps <= 0:
        raise ValueError(f"sample_fps must be positive, got {sample_fps}")
    samples: list[SampledFrame] = []
    next_t_s = 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate) if stream.average_rate else 25.0
        for index, frame in enumerate(container.decode(stream)):
            t_s = float(frame.time) if frame.time is not None else index / fps
            if samples and samples[-1].next_grey is None and samples[-1].index == index - 1:
                samples[-1].next_grey = flow_grey(_upright_bgr(frame))
            if len(samples) >= max_frames:
                if samples[-1].next_grey is not None:
                    break
                continue
            if t_s + 0.5 / fps >= next_t_s:  # half a frame of slack: 30 fps sampled at 4 fps takes every 7.5th
                samples.append(SampledFrame(index=index, t_s=t_s, bgr=_upright_bgr(frame)))
                next_t_s += 1.0 / sample_fps
    return samples


def motion_px(samples: list[SampledFrame]) -> float | None:
    """Mean optical-flow magnitude (Farneback) between each sampled frame and the next decoded one.

    In pixels per frame at ``FLOW_WIDTH_PX`` width, so it does not depend on the video's resolution;
    None when no sample has a following frame (a one-frame video).
    """
    magnitudes = []
    for sample in samples:
        if sample.next_grey is None:
            continue
        grey = flow_grey(sample.bgr)
        flow = cv2.calcOpticalFlowFarneback(grey, sample.next_grey, None, 0.5, 3, 15, 3, 5, 1.2, 0)  # (h, w, 2)
        magnitudes.append(float(np.linalg.norm(flow, axis=-1).mean()))
    return float(np.mean(magnitudes)) if magnitudes else None
