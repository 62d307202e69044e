"""The per-video step: decode once, cut clips, find/track/pose/embed faces, return flat Arrow tables.

One pass over the frames: every frame feeds the clip cutter (shot detector on a thumbnail, length splits);
frames at ``sample_fps`` (and the first frame of every clip) go to the face stack. Only small things are kept
per face (box, pose, scores); aligned chips and JPEG crops are kept for the few best faces of each
track, so memory stays bounded however long the video is. Embedding runs at the end on those chips.
Every sampled frame also gives one 64-bit hash (:mod:`datakit.video.fingerprint`), the clip's footage
fingerprint from which the global pass finds copies of one recording across videos.
The rows and their ids are made in :mod:`datakit.video.rows`.
"""

from __future__ import annotations

import heapq
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from datakit.config import BuildConfig
from datakit.faces import FaceStack
from datakit.faces.quality import face_quality, head_crop, sharpness
from datakit.video.crops import offer_spread
from datakit.video.decode import DecodeStats, ProbeInfo, VideoError, iter_frames, probe
from datakit.video.discover import SourceFile
from datakit.video.fingerprint import frame_hash
from datakit.video.quality import QualityScan
from datakit.video.rows import FaceRow, ScanRows, error_row, probe_columns, tables, video_tables, videos_row
from datakit.video.segments import Plan, iter_segment_frames
from datakit.video.shots import SCORE_WIDTH, ClipCutter, Segment
from datakit.video.tracking import FaceTracker


@dataclass(slots=True)
class _TrackKeep:
    """Bounded per-track memory: the best chips to embed and the best crops per view."""

    chips: list = field(default_factory=list)  # heap of (quality, face_no, chip)
    crops: dict = field(default_factory=lambda: defaultdict(list))  # view -> offer_spread pool of CropCandidate


@dataclass(slots=True)
class _Scan:
    """What one pass over the frames of a video (or of a segment of a long one) collects."""

    stats: DecodeStats = field(default_factory=DecodeStats)
    timer: defaultdict = field(default_factory=lambda: defaultdict(float))  # seconds per step
    rows: list[FaceRow] = field(default_factory=list)
    keep: dict[int, _TrackKeep] = field(default_factory=lambda: defaultdict(_TrackKeep))
    quality: QualityScan = field(default_factory=QualityScan)  # clip quality scores: a few numbers per frame
    hashes: list[tuple[int, float, int]] = field(default_factory=list)  # (frame index, t_s, hash): fingerprint
    num_sampled: int = 0

    @property
    def status(self) -> str:
        return "partial" if self.stats.error else ("no_faces" if not self.rows else "ok")


@dataclass(slots=True)
class VideoOutput:
    """Everything one video contributes to the manifests, plus timings for the run summary."""

    tables: dict[str, pa.Table]
    status: str
    seconds: dict[str, float]
    num_frames: int = 0
    num_sampled: int = 0
    note: str = ""  # how the video was run when that is worth saying (a long video that was not split)


def _keep_top(heap: list, k: int, item: tuple) -> None:
    if len(heap) < k:
        heapq.heappush(heap, item)
    elif item[0] > heap[0][0]:
        heapq.heapreplace(heap, item)


def process_video(src: SourceFile, stack: FaceStack, cfg: BuildConfig) -> VideoOutput:
    """Run every per-video step on one file; never raises for a bad file (errors become rows)."""
    dim = stack.embedder.dim
    if src.kind != "video":
        reason = {
            "empty": ("EmptyFile", "the file is empty (0 bytes)"),
            "unreadable": (src.problem.split(":")[0] or "OSError", f"the file cannot be read ({src.problem})"),
            "unknown": ("NotAVideo", "the file content is not a known video container"),
        }.get(src.kind, ("NotAVideo", f"the file content is an image ({src.kind.split(':')[-1]}), not a video"))
        return failed_output(src, dim, VideoError("discover", *reason))
    try:
        info = probe(src.path)
    except VideoError as err:
        return failed_output(src, dim, err)
    try:
        return _process(src, stack, cfg, info)
    except Exception as err:  # a file that breaks a library in a way we did not foresee: record, go on
        where = traceback.extract_tb(err.__traceback__)[-1]
        message = f"{err} (in {where.name}, {Path(where.filename).name}:{where.lineno})"
        return failed_output(src, dim, VideoError("process", type(err).__name__, message), probe_columns(info))


def failed_output(
    src: SourceFile,
    dim: int,
    error: VideoError,
    probe: dict | None = None,
    *,
    num_frames: int | None = None,
    seconds: dict | None = None,
) -> VideoOutput:
    """The tables of a video that could not be used: a ``failed`` videos row and its error row
    (``probe``: the file's :func:`~datakit.video.rows.probe_columns` when it could be probed)."""
    row = videos_row(src, "failed", probe=probe, num_frames=num_frames, error=error.message)
    return VideoOutput(tables(dim, row, errors=[error_row(error, src)]), "failed", seconds or {})


def _process(src: SourceFile, stack: FaceStack, cfg: BuildConfig, info: ProbeInfo) -> VideoOutput:
    """A whole video: its frames once, cut into clips by its own :class:`ClipCutter`."""
    scan = _Scan()
    cutter = ClipCutter.from_config(info.fps, cfg)

    def new_clip_at(item) -> bool:
        t_shot = time.perf_counter()
        found = cutter.push(item.index, item.t_s, item.thumbnail_bgr(SCORE_WIDTH))
        scan.timer["shots"] += time.perf_counter() - t_shot
        return found

    _scan_frames(scan, iter_frames(src.path, info.fps, scan.stats), new_clip_at, stack, cfg)
    stats = scan.stats
    if stats.num_frames == 0:
        error = stats.error or VideoError("decode", "NoFrames", "no frame could be decoded")
        return failed_output(
            src, stack.embedder.dim, error, probe_columns(info), num_frames=0, seconds=dict(scan.timer)
        )
    clips = cutter.clips()
    error = stats.error.message if stats.error else None
    row = videos_row(src, scan.status, probe=probe_columns(info), num_frames=stats.num_frames, error=error, clips=clips)
    return _output(src, stack, scan, row, clips)


def process_segment(src: SourceFile, stack: FaceStack, cfg: BuildConfig, plan: Plan, seg_no: int) -> VideoOutput:
    """One segment of a long video (datakit.video.segments): its frames only, the shot cuts from the first pass.

    The tables hold the segment's clips, faces, tracks, crops and errors with the ids of an unsplit run;
    the ``videos`` row is written once every segment is done (pipelines.long_videos)."""
    scan = _Scan()
    spec = plan.segment(seg_no)
    restarts = set(plan.restarts)
    clips = plan.clip_segments()[spec.clip_lo : spec.clip_hi]
    frames = iter_segment_frames(src.path, plan.fps, scan.stats, spec.start_frame, spec.end_frame, plan.pts)
    _scan_frames(scan, frames, lambda item: item.index in restarts, stack, cfg)
    row = videos_row(src, scan.status, num_frames=scan.stats.num_frames)  # not written: the video's comes later
    out = _output(src, stack, scan, row, clips, clip_offset=spec.clip_lo)
    out.note = scan.stats.note
    return out


def _output(
    src: SourceFile, stack: FaceStack, scan: _Scan, row: dict, clips: list[Segment], *, clip_offset: int = 0
) -> VideoOutput:
    """Embed the kept chips, then turn the scan into the video's (or the segment's) tables."""
    t_emb = time.perf_counter()
    _embed(scan.rows, scan.keep, stack)
    scan.timer["embed"] += time.perf_counter() - t_emb
    rows = ScanRows(
        src,
        clips,
        scan.rows,
        crops=[c for kept in scan.keep.values() for pool in kept.crops.values() for c in pool],
        quality=scan.quality,
        hashes=scan.hashes,
        errors=[error_row(scan.stats.error, src)] if scan.stats.error else [],
        clip_offset=clip_offset,
    )
    return VideoOutput(
        video_tables(stack.embedder.dim, row, rows),
        scan.status,
        dict(scan.timer),
        scan.stats.num_frames,
        scan.num_sampled,
    )


def _scan_frames(scan: _Scan, frames, new_clip_at, stack: FaceStack, cfg: BuildConfig) -> None:
    """The per-frame loop, into ``scan``: ``new_clip_at(frame)`` says whether a new clip starts at that frame
    (an unsplit run asks its :class:`ClipCutter`, a segment the first pass). Every clip start restarts the
    tracker, the sampling clock and the motion measure, so nothing carries from one clip into the next and
    a work item may start at any of them."""
    tracker = FaceTracker.from_config(cfg, stack.detector)
    timer = scan.timer
    next_sample_t = 0.0
    t0 = time.perf_counter()
    while True:
        t_dec = time.perf_counter()
        item = next(frames, None)
        timer["decode"] += time.perf_counter() - t_dec
        if item is None:
            break
        index, t_s = item.index, item.t_s
        new_clip = new_clip_at(item)
        if new_clip:
            tracker.cut()
        if not (new_clip or t_s + 1e-6 >= next_sample_t):
            continue
        next_sample_t = t_s + 1.0 / cfg.sample_fps
        scan.num_sampled += 1
        t_dec = time.perf_counter()
        frame = item.bgr()
        timer["decode"] += time.perf_counter() - t_dec
        t_quality = time.perf_counter()
        scan.quality.add(index, t_s, frame, cut=new_clip)
        timer["clip_quality"] += time.perf_counter() - t_quality
        t_hash = time.perf_counter()
        code = frame_hash(frame)  # the footage fingerprint (copies across videos), from the frame decoded anyway
        if code is not None:
            scan.hashes.append((index, t_s, code))
        timer["fingerprint"] += time.perf_counter() - t_hash
        _faces_in_frame(scan, frame, index, t_s, stack, cfg, tracker)
    timer["total"] = time.perf_counter() - t0


def _faces_in_frame(scan: _Scan, frame, index: int, t_s: float, stack: FaceStack, cfg: BuildConfig, tracker) -> None:
    timer = scan.timer
    t_det = time.perf_counter()
    # Down to the tracker's low score: such faces may extend a live track, never start one (datakit.video.tracking).
    faces = stack.detector.detect(frame, min_score=tracker.low_score)
    faces = sorted((f for f in faces if f.face_px >= cfg.min_face_px), key=lambda f: f.bbox[0])
    timer["detect"] += time.perf_counter() - t_det
    t_track = time.perf_counter()
    keys = tracker.update(t_s, [f.bbox for f in faces], [f.det_score for f in faces], frame.shape[1::-1])
    kept_pairs = [(f, k) for f, k in zip(faces, keys, strict=True) if k is not None]  # weak, unmatched: dropped
    faces, keys = [f for f, _ in kept_pairs], [k for _, k in kept_pairs]
    timer["track+quality"] += time.perf_counter() - t_track
    if not faces:
        return
    t_pose = time.perf_counter()
    stack.pose.estimate(frame, faces)
    timer["pose"] += time.perf_counter() - t_pose
    t_rest = time.perf_counter()
    min_px, max_yaw = embed_limits(cfg, stack)
    for slot, (face, key) in enumerate(zip(faces, keys, strict=True)):
        sharp = sharpness(frame, face.bbox)
        quality = face_quality(face, sharp, frame.shape)
        view = cfg.view_bins(face.yaw_deg)
        no = len(scan.rows)
        scan.rows.append(
            FaceRow(
                index,
                t_s,
                slot,
                key,
                tuple(face.bbox),
                face.landmarks,
                face.det_score,
                face.face_px,
                sharp,
                quality,
                face.yaw_deg,
                face.pitch_deg,
                face.roll_deg,
                view,
            )
        )
        kept = scan.keep[key]
        embeddable = face.face_px >= min_px and (face.yaw_deg is None or abs(face.yaw_deg) <= max_yaw)
        if embeddable and (len(kept.chips) < cfg.embed_per_track or quality > kept.chips[0][0]):
            t_chip = time.perf_counter()
            _keep_top(kept.chips, cfg.embed_per_track, (quality, no, stack.embedder.chip(frame, face)))
            timer["chip"] += time.perf_counter() - t_chip
        if view is not None:
            offer_spread(
                kept.crops[view], cfg.crops_per_track_view, cfg.crop_min_gap_s, quality, t_s, no,
                lambda box=face.bbox: head_crop(frame, box, max_side=cfg.crop_max_side),
            )  # fmt: skip
    timer["track+quality"] += time.perf_counter() - t_rest


def embed_limits(cfg: BuildConfig, stack: FaceStack) -> tuple[float, float]:
    """(least face size px, largest |yaw| deg) of the faces worth embedding: the config's values, else the
    embedder's own calibrated ones (each embedder degrades differently with size and pose)."""
    emb = stack.embedder
    min_px = cfg.min_embed_px if cfg.min_embed_px is not None else emb.min_embed_px
    max_yaw = cfg.max_embed_yaw_deg if cfg.max_embed_yaw_deg is not None else emb.max_embed_yaw_deg
    return float(min_px), float(max_yaw)


def _embed(rows: list[FaceRow], keep: dict[int, _TrackKeep], stack: FaceStack) -> None:
    """Embed the kept chips of every track in one batch."""
    order = [(no, chip) for kept in keep.values() for _, no, chip in kept.chips]
    if not order:
        return
    vectors = stack.embedder.embed([chip for _, chip in order])
    for (no, _), vec in zip(order, vectors, strict=True):
        rows[no].embedding = np.asarray(vec, dtype=np.float32)
