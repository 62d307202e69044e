"""Long videos in parallel: a cheap first pass finds the clips, then segments of whole clips are work items.

First pass (:func:`first_pass`): every frame scored for shots on a ``SCORE_WIDTH`` thumbnail only (no
full-size conversion), in one sequential decode or in ranges of equal duration decoded in parallel
(:func:`scan_range`: each from the keyframe before it, its first frame scored against the frame before
it); the scores then go in frame order through the :class:`ClipCutter` an unsplit run uses, so the cuts
at range edges are the sequential ones. It keeps the clips, the frames where a new clip started (where an
unsplit run cuts its tracker, restarts sampling and motion: reported cuts and length splits) and every
frame's pts, nothing else.

Segments (:func:`plan_segments`): consecutive whole clips of about ``segment_s``; a segment starts only
at a clip start where the unsplit run restarts everything (a length split, or a cut reported on its own
frame), so a segment's tracks, samples and clip scores are exactly the unsplit run's. A long single shot
splits at its length splits (every ``max_clip_s``); the pieces of one person on both sides of such a
boundary are joined in the global pass as they are within one work item (datakit.passes.consolidate).
Each segment decodes only its frames (:func:`iter_segment_frames`: seek to the keyframe before, decode
forward, map frames to the indices of a sequential decode through the pts map; any mismatch falls back
to a sequential decode).

A video whose timestamps make that mapping unsafe (missing or non-increasing pts, variable frame rate,
a decode error in the first pass) is not split: it runs as one item, and the plan says why.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from datakit.video.decode import DecodeStats, Frame, ProbeInfo, Scalers, VideoError, iter_frames
from datakit.video.shots import SCORE_WIDTH, ClipCutter, Segment, ShotDetector


@dataclass(slots=True)
class SegmentSpec:
    """One work item: frames ``[start_frame, end_frame)`` holding clips ``[clip_lo, clip_hi)``."""

    start_frame: int
    end_frame: int
    clip_lo: int
    clip_hi: int


@dataclass(slots=True)
class Plan:
    """What the first pass learnt about one long video (stored as ``_plan/<video_id>.json``)."""

    video_id: str
    split: bool  # False: the video runs as one item (``reason`` says why)
    reason: str = ""
    num_frames: int = 0
    fps: float = 0.0
    duration_s: float | None = None
    clips: list[list] = field(default_factory=list)  # [start_frame, end_frame, start_s, end_s, shot] per clip
    restarts: list[int] = field(default_factory=list)  # frames where a new clip started (ClipCutter.restarts)
    pts: list[int] = field(default_factory=list)  # pts of every frame, in sequential decode order
    segments: list[list[int]] = field(default_factory=list)  # SegmentSpec fields per segment
    seconds: float = 0.0
    ranges: int = 1  # how many ranges the first pass was run in
    videos_row: dict = field(default_factory=dict)  # the probe's columns of the video's ``videos`` row

    def segment(self, no: int) -> SegmentSpec:
        return SegmentSpec(*self.segments[no])

    def clip_segments(self) -> list[Segment]:
        return [Segment(int(a), int(b), float(s), float(e), int(shot)) for a, b, s, e, shot in self.clips]

    def save(self, path: Path) -> None:
        """The pts map as ``<video_id>.pts.npy`` (written first), the rest as small JSON (the commit point)."""
        from datakit.store import temp_path, write_json_atomic

        data = asdict(self)
        pts = data.pop("pts")
        path.parent.mkdir(parents=True, exist_ok=True)
        final = path.with_suffix(".pts.npy")
        tmp = temp_path(final)  # a datakit temporary: the only kind cleanup removes
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a path
            np.save(f, np.asarray(pts, dtype=np.int64))
        os.replace(tmp, final)
        write_json_atomic(data, path)

    @classmethod
    def load(cls, path: Path, *, with_pts: bool = True) -> Plan:
        """A stored plan. The run folder is untrusted input: a file that is not a plan datakit wrote is a
        ValueError naming it (the pts map is read without pickle)."""
        try:
            data = json.loads(path.read_text())
            pts_file = path.with_suffix(".pts.npy")
            data["pts"] = np.load(pts_file, allow_pickle=False).tolist() if with_pts and pts_file.exists() else []
            plan = cls(**data)
            shapes = [(plan.clips, 5), (plan.segments, 4)]
            if not all(isinstance(r, list) and len(r) == n for rows, n in shapes for r in rows):
                raise ValueError("clips or segments of the wrong shape")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path} is not a plan datakit wrote ({exc}); rerun with --overwrite") from exc
        return plan


@dataclass(slots=True)
class RangeScan:
    """The first pass over one range of a video: the frames with ``lo <= pts < hi`` (None: from the start,
    to the end), each with its pts, time and shot score."""

    lo: int | None
    hi: int | None
    pts: list[int] = field(default_factory=list)
    t_s: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    before: int | None = None  # pts of the frame decoded just before the range: its first score's reference
    problem: str = ""  # why the range cannot be trusted (a decode error, frames without pts)
    seconds: float = 0.0


def scan_range(path: str | Path, fps: float, lo: int | None, hi: int | None, threads: int = 1) -> RangeScan:
    """Decode one range of frames and score each for shots against the frame before it (which is decoded
    too: seek to the keyframe before ``lo - 1``). ``threads``: decoder threads (0: FFmpeg's choice)."""
    t0 = time.perf_counter()
    out = RangeScan(lo, hi)
    shots = ShotDetector(fps)  # its score only: a function of a frame and the one scored before it
    stats = DecodeStats()
    seek = None if lo is None else lo - 1
    kind = "AUTO" if threads == 0 else "SLICE"
    frames = iter_frames(path, fps, stats, threads=threads, thread_type=kind, seek_pts=seek)
    for item in frames:
        p = item._frame.pts
        if p is None:
            out.problem = "frames without pts"
            break
        if hi is not None and p >= hi:
            break
        score = shots.score(item.index, item.thumbnail_bgr(SCORE_WIDTH))
        if lo is not None and p < lo:  # decoded for the score of the range's first frame only
            out.before = int(p)
            continue
        out.pts.append(int(p))
        out.t_s.append(item.t_s)
        out.scores.append(score)
    if stats.error is not None or stats.num_bad_packets:
        out.problem = f"first pass decode error: {stats.error.message if stats.error else 'bad packets'}"
    out.seconds = time.perf_counter() - t0
    return out


def range_bounds(path: str | Path, duration_s: float | None, ranges: int) -> list[tuple[int | None, int | None]]:
    """``ranges`` consecutive pts ranges of equal duration covering the video (one when it has no duration)."""
    if ranges <= 1 or not duration_s:
        return [(None, None)]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 1)
        start = stream.start_time or 0
    cuts = [start + round(k * duration_s / ranges / time_base) for k in range(1, ranges)]
    return list(itertools.pairwise([None, *cuts, None]))


def _sequential_map(fn: Callable, args: list[tuple]) -> list:
    return [fn(*a) for a in args]


def first_pass(
    path: str | Path, video_id: str, info: ProbeInfo, cfg, *, ranges: int = 1, run: Callable = _sequential_map
) -> Plan:
    """Score every frame for shots, cut the clips as an unsplit run does, plan the segments.

    ``ranges`` > 1: the video is scored in that many ranges of equal duration by ``run(scan_range, args)``
    (pipelines.long_videos runs them as Ray tasks on idle CPUs), each range from the frame before its
    first; the scores are then fed in frame order to the unsplit run's :class:`ClipCutter`, so the plan is
    the one a single sequential pass makes. Ranges that do not join (a seek that lands elsewhere than the
    frame before a range) are redone as one sequential pass."""
    t0 = time.perf_counter()
    bounds = range_bounds(path, info.duration_s, ranges)
    threads = 0 if len(bounds) == 1 else 1  # one range: FFmpeg's threads; several: one thread each
    parts = run(scan_range, [(str(path), info.fps, lo, hi, threads) for lo, hi in bounds])
    if not _joined(parts):
        parts = [scan_range(path, info.fps, None, None, 0)]
    pts = [p for part in parts for p in part.pts]
    plan = Plan(video_id, False, num_frames=len(pts), fps=info.fps, duration_s=info.duration_s)
    plan.ranges = len(parts)
    reason = next((part.problem for part in parts if part.problem), "") or _unsafe(pts)
    if reason:
        plan.reason = reason
        plan.seconds = time.perf_counter() - t0
        return plan
    cutter = ClipCutter.from_config(info.fps, cfg)
    t_s = (t for part in parts for t in part.t_s)
    scores = (x for part in parts for x in part.scores)
    for index, (t, score) in enumerate(zip(t_s, scores, strict=True)):
        cutter.push_score(index, t, score)
    clips = cutter.clips()
    plan.clips = [[c.start_frame, c.end_frame, c.start_s, c.end_s, c.shot] for c in clips]
    plan.restarts, plan.pts = cutter.restarts, pts
    specs = plan_segments(clips, set(cutter.restarts), cfg.segment_s)
    plan.segments = [[s.start_frame, s.end_frame, s.clip_lo, s.clip_hi] for s in specs]
    plan.seconds = time.perf_counter() - t0
    if len(specs) < 2:
        plan.reason = "one segment only (shorter than two segments)"
        return plan
    plan.split = True
    return plan


def _joined(parts: list[RangeScan]) -> bool:
    """Whether every range was scored from the last frame of the range before it."""
    return all(b.before is not None and a.pts and b.before == a.pts[-1] for a, b in itertools.pairwise(parts))


def _unsafe(pts: list[int]) -> str:
    if not pts:
        return "no frame decoded"
    deltas = [b - a for a, b in itertools.pairwise(pts)]
    if any(d <= 0 for d in deltas):
        return "non-monotonic pts"
    if deltas:
        ordered = sorted(deltas)
        median = ordered[len(ordered) // 2]
        if ordered[0] < 0.5 * median or ordered[-1] > 1.5 * median:
            return "variable frame rate"
    return ""


def plan_segments(clips: list[Segment], restarts: set[int], segment_s: float) -> list[SegmentSpec]:
    """Group consecutive clips into segments of about ``segment_s``; a segment may start only at frame 0 or
    at a clip start in ``restarts`` (where an unsplit run resets its per-clip state)."""
    specs: list[SegmentSpec] = []
    lo = 0
    for c in range(1, len(clips) + 1):
        if c < len(clips):
            start = clips[c].start_frame
            if start not in restarts:
                continue
            if (clips[c].start_s - clips[lo].start_s) < segment_s:
                continue
        specs.append(SegmentSpec(clips[lo].start_frame, clips[c - 1].end_frame, lo, c))
        lo = c
    # a short tail joins the segment before it
    if len(specs) >= 2:
        tail = specs[-1]
        if (clips[tail.clip_hi - 1].end_s - clips[tail.clip_lo].start_s) < 0.5 * segment_s:
            prev = specs[-2]
            specs[-2:] = [SegmentSpec(prev.start_frame, tail.end_frame, prev.clip_lo, tail.clip_hi)]
    return specs


def iter_segment_frames(
    path: str | Path, fps: float, stats: DecodeStats, start: int, end: int, pts: list[int]
) -> Iterator[Frame]:
    """Frames ``[start, end)`` with the indices and times of a sequential decode: seek to the keyframe
    before ``start``, decode forward and check every frame's pts against the first pass; on any mismatch
    (or a seek error) decode the file sequentially from its start instead."""
    try:
        yield from _seek_decode(path, fps, stats, start, end, pts)
        return
    except _Mismatch:
        pass
    stats.num_frames, stats.num_bad_packets, stats.error, stats.errors = 0, 0, None, []
    stats.note = "sequential decode (seek did not map onto the first pass)"
    for frame in iter_frames(path, fps, stats):
        if frame.index >= end:
            break
        if frame.index >= start:
            yield frame


class _Mismatch(Exception):
    pass


def _seek_decode(path, fps, stats: DecodeStats, start: int, end: int, pts: list[int]) -> Iterator[Frame]:
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise _Mismatch from exc
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.thread_count = 1
        time_base = stream.time_base or Fraction(1, 1)
        start_pts = stream.start_time or 0
        scalers = Scalers()
        index = start
        yielded = False
        try:
            if start > 0:
                container.seek(pts[start], stream=stream, backward=True, any_frame=False)
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if frame.pts is None:
                        raise _Mismatch
                    if frame.pts < pts[start]:
                        if yielded:
                            raise _Mismatch
                        continue
                    if index >= end:
                        return
                    if frame.pts != pts[index]:
                        if yielded:
                            raise RuntimeError(f"frame {index}: pts {frame.pts} != first pass {pts[index]}")
                        raise _Mismatch
                    t_s = float((frame.pts - start_pts) * time_base)
                    stats.num_frames += 1
                    yielded = True
                    yield Frame(index, t_s, frame, scalers)
                    index += 1
        except av.error.FFmpegError as exc:
            if yielded:
                stats.error = VideoError("decode", type(exc).__name__, str(exc))
                return
            raise _Mismatch from exc
    if index < end and not yielded:
        raise _Mismatch
    if index < end:
        stats.error = VideoError("decode", "ShortSegment", f"segment ended at frame {index}, expected {end}")
