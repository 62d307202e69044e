"""The per-video step: decode once, cut shots, find/track/pose/embed faces, return flat Arrow tables.

One pass over the frames: every frame feeds the shot detector (cheap, downscaled); frames at
``sample_fps`` (and the first frame of every shot) go to the face stack. Only small things are kept
per face (box, pose, scores); aligned chips and JPEG crops are kept for the few best faces of each
track, so memory stays bounded however long the video is. Embedding runs at the end on those chips.
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

from datakit import schema
from datakit.config import BuildConfig
from datakit.faces import FaceStack
from datakit.faces.quality import face_quality, head_crop, sharpness
from datakit.passes.references import offer_spread
from datakit.video.decode import DecodeStats, ProbeInfo, VideoError, iter_frames, probe
from datakit.video.discover import SourceFile
from datakit.video.quality import QualityScan
from datakit.video.shots import SCORE_WIDTH, ShotDetector, split_long
from datakit.video.tracking import FaceTracker


@dataclass(slots=True)
class _FaceRow:
    frame_index: int
    t_s: float
    slot: int  # order within the frame (left to right)
    track_key: int
    bbox: tuple[float, ...]
    landmarks: np.ndarray | None
    det_score: float
    face_px: float
    sharpness: float
    quality: float
    yaw: float | None
    pitch: float | None
    roll: float | None
    view: str | None
    embedding: np.ndarray | None = None


@dataclass(slots=True)
class _TrackKeep:
    """Bounded per-track memory: the best chips to embed and the best crops per view."""

    chips: list = field(default_factory=list)  # heap of (quality, face_no, chip)
    crops: dict = field(default_factory=lambda: defaultdict(list))  # view -> offer_spread pool of CropCandidate


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
    videos_row = {
        "video_id": src.video_id, "path": src.rel_path, "size_bytes": src.size_bytes, "duration_s": info.duration_s,
        "fps": info.fps, "width": info.width, "height": info.height, "codec": info.codec,
    }  # fmt: skip
    try:
        return _scan(src, stack, cfg, info, videos_row)
    except Exception as err:  # a file that breaks a library in a way we did not foresee: record, go on
        where = traceback.extract_tb(err.__traceback__)[-1]
        message = f"{err} (in {where.name}, {Path(where.filename).name}:{where.lineno})"
        return failed_output(src, dim, VideoError("process", type(err).__name__, message), videos_row)


def failed_output(
    src: SourceFile, dim: int, error: VideoError, videos_row: dict | None = None, *, seconds: dict | None = None
) -> VideoOutput:
    """The tables of a video that could not be used: a ``failed`` videos row and its error row."""
    row = {"video_id": src.video_id, "path": src.rel_path, "size_bytes": src.size_bytes, **(videos_row or {})}
    row.update(status="failed", error=error.message)
    return VideoOutput(_tables(dim, row, errors=[_error_row(error, src)]), "failed", seconds or {})


def _scan(src: SourceFile, stack: FaceStack, cfg: BuildConfig, info: ProbeInfo, videos_row: dict) -> VideoOutput:
    timer = defaultdict(float)
    stats = DecodeStats()
    shots = ShotDetector(info.fps, threshold=cfg.shot_threshold, min_shot_s=cfg.min_shot_s)

    def new_shot_at(item) -> bool:
        t_shot = time.perf_counter()
        found = shots.push(item.index, item.t_s, item.thumbnail_bgr(SCORE_WIDTH))
        timer["shots"] += time.perf_counter() - t_shot
        return found

    scan = _scan_frames(iter_frames(src.path, info.fps, stats), new_shot_at, stack, cfg, timer)
    if stats.num_frames == 0:
        error = stats.error or VideoError("decode", "NoFrames", "no frame could be decoded")
        return failed_output(src, stack.embedder.dim, error, {**videos_row, "num_frames": 0}, seconds=dict(timer))
    rows, keep, quality, num_sampled = scan
    errors = [_error_row(stats.error, src)] if stats.error else []
    t_emb = time.perf_counter()
    _embed(rows, keep, stack)
    timer["embed"] += time.perf_counter() - t_emb
    segments = split_long(shots.segments(), info.fps, cfg.max_clip_s)
    status = "partial" if stats.error else ("no_faces" if not rows else "ok")
    videos_row.update(status=status, num_frames=stats.num_frames, error=stats.error.message if stats.error else None)
    if not videos_row.get("duration_s"):
        videos_row["duration_s"] = segments[-1].end_s if segments else None
    tables = _assemble(src, stack, cfg, videos_row, segments, rows, keep, errors, quality)
    return VideoOutput(tables, status, dict(timer), stats.num_frames, num_sampled)


def _scan_frames(frames, new_shot_at, stack: FaceStack, cfg: BuildConfig, timer: dict):
    """The per-frame loop: ``new_shot_at(frame)`` says whether a new shot starts at that frame (an unsplit run
    asks its shot detector, a segment the first pass); returns (face rows, kept chips/crops, clip quality
    scan, number of sampled frames)."""
    tracker = FaceTracker.from_config(cfg, stack.detector)
    rows: list[_FaceRow] = []
    keep: dict[int, _TrackKeep] = defaultdict(_TrackKeep)
    quality = QualityScan()  # clip quality scores (datakit.video.quality): a few numbers per sampled frame
    next_sample_t, num_sampled = 0.0, 0
    t0 = time.perf_counter()
    while True:
        t_dec = time.perf_counter()
        item = next(frames, None)
        timer["decode"] += time.perf_counter() - t_dec
        if item is None:
            break
        index, t_s = item.index, item.t_s
        new_shot = new_shot_at(item)
        if new_shot:
            tracker.cut()
        if not (new_shot or t_s + 1e-6 >= next_sample_t):
            continue
        next_sample_t = t_s + 1.0 / cfg.sample_fps
        num_sampled += 1
        t_dec = time.perf_counter()
        frame = item.bgr()
        timer["decode"] += time.perf_counter() - t_dec
        t_quality = time.perf_counter()
        quality.add(index, t_s, frame, cut=new_shot)
        timer["clip_quality"] += time.perf_counter() - t_quality
        _faces_in_frame(frame, index, t_s, stack, cfg, tracker, rows, keep, timer)
    timer["total"] = time.perf_counter() - t0
    return rows, keep, quality, num_sampled


def process_segment(src: SourceFile, stack: FaceStack, cfg: BuildConfig, plan, seg_no: int) -> VideoOutput:
    """One segment of a long video (datakit.video.segments): its frames only, the shot cuts from the first pass.

    The tables hold the segment's clips, faces, tracks, crops and errors with the ids of an unsplit run;
    the ``videos`` row is written once every segment is done (pipelines.build)."""
    from datakit.video.segments import iter_segment_frames

    timer = defaultdict(float)
    stats = DecodeStats()
    spec = plan.segment(seg_no)
    emitted = set(plan.emitted)
    clips = plan.clip_segments()[spec.clip_lo : spec.clip_hi]
    frames = iter_segment_frames(src.path, plan.fps, stats, spec.start_frame, spec.end_frame, plan.pts)
    rows, keep, quality, num_sampled = _scan_frames(frames, lambda item: item.index in emitted, stack, cfg, timer)
    errors = [_error_row(stats.error, src)] if stats.error else []
    t_emb = time.perf_counter()
    _embed(rows, keep, stack)
    timer["embed"] += time.perf_counter() - t_emb
    status = "partial" if stats.error else ("no_faces" if not rows else "ok")
    tables = _assemble(
        src, stack, cfg, {"video_id": src.video_id}, clips, rows, keep, errors, quality, clip_offset=spec.clip_lo
    )
    out = VideoOutput(tables, status, dict(timer), stats.num_frames, num_sampled)
    out.note = stats.note
    return out


def _faces_in_frame(frame, index, t_s, stack: FaceStack, cfg: BuildConfig, tracker, rows, keep, timer) -> None:
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
        no = len(rows)
        rows.append(
            _FaceRow(
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
        kept = keep[key]
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


def _embed(rows: list[_FaceRow], keep: dict[int, _TrackKeep], stack: FaceStack) -> None:
    """Embed the kept chips of every track in one batch."""
    order = [(no, chip) for kept in keep.values() for _, no, chip in kept.chips]
    if not order:
        return
    vectors = stack.embedder.embed([chip for _, chip in order])
    for (no, _), vec in zip(order, vectors, strict=True):
        rows[no].embedding = np.asarray(vec, dtype=np.float32)


def _error_row(exc: VideoError, src: SourceFile) -> dict:
    return {
        "stage": exc.stage,
        "item": src.rel_path,
        "video_id": src.video_id,
        "error_type": exc.error_type,
        "message": exc.message,
    }


def _assemble(
    src, stack, cfg, videos_row, segments, rows, keep, errors, quality=None, *, clip_offset: int = 0
) -> dict[str, pa.Table]:
    """Turn the scan's rows into the per-video tables, with deterministic ids (``clip_offset``: the index of
    the first clip in the whole video, for a segment of a long one)."""
    vid = src.video_id
    clip_ids = [f"{vid}_c{n + clip_offset:04d}" for n in range(len(segments))]
    starts = np.array([s.start_frame for s in segments])
    clip_of = [int(np.searchsorted(starts, r.frame_index, side="right") - 1) for r in rows]
    parent = _track_embeddings(rows)
    # Track pieces: a tracker track cut by clip boundaries; ids follow order of appearance in the clip.
    pieces: dict[tuple[int, int], list[int]] = defaultdict(list)
    for no, (r, c) in enumerate(zip(rows, clip_of, strict=True)):
        pieces[(c, r.track_key)].append(no)
    per_clip: dict[int, int] = defaultdict(int)
    track_id_of: dict[tuple[int, int], str] = {}
    for c, key in sorted(pieces, key=lambda p: (p[0], rows[pieces[p][0]].frame_index, rows[pieces[p][0]].slot)):
        track_id_of[(c, key)] = f"{clip_ids[c]}_t{per_clip[c]:02d}"
        per_clip[c] += 1
    face_ids = [f"{vid}_f{r.frame_index:06d}_{r.slot}" for r in rows]
    faces = [
        {
            "face_id": face_ids[no],
            "clip_id": clip_ids[c],
            "track_id": track_id_of[(c, r.track_key)],
            "video_id": vid,
            "frame_index": r.frame_index,
            "t_s": r.t_s,
            "bbox": list(r.bbox),
            "landmarks": None if r.landmarks is None else np.asarray(r.landmarks, np.float32).reshape(-1).tolist(),
            "det_score": r.det_score,
            "face_px": r.face_px,
            "sharpness": r.sharpness,
            "quality": r.quality,
            "yaw_deg": r.yaw,
            "pitch_deg": r.pitch,
            "roll_deg": r.roll,
            "view": r.view,
            "embedding": r.embedding,
        }
        for no, (r, c) in enumerate(zip(rows, clip_of, strict=True))
    ]
    tracks = []
    for (c, key), members in pieces.items():
        views = {rows[m].view for m in members if rows[m].view}
        tracks.append(
            {
                "track_id": track_id_of[(c, key)],
                "clip_id": clip_ids[c],
                "video_id": vid,
                "identity_id": None,
                "start_s": rows[members[0]].t_s,
                "end_s": rows[members[-1]].t_s,
                "num_faces": len(members),
                "num_embedded": sum(rows[m].embedding is not None for m in members),
                "views": [v for v in schema.VIEWS if v in views],
                "mean_quality": float(np.mean([rows[m].quality for m in members])),
                "embedding": parent.get(key),
            }
        )
    tracks.sort(key=lambda t: t["track_id"])
    scores = (quality or QualityScan()).clip_scores(
        starts, [r.frame_index for r in rows], [r.track_key for r in rows], [r.face_px for r in rows]
    )
    clips = []
    for c, seg in enumerate(segments):
        clips.append(
            {
                "clip_id": clip_ids[c],
                "video_id": vid,
                "start_s": seg.start_s,
                "end_s": seg.end_s,
                "start_frame": seg.start_frame,
                "end_frame": seg.end_frame,
                "num_frames": seg.num_frames,
                "num_faces": sum(1 for x in clip_of if x == c),
                "num_tracks": per_clip.get(c, 0),
                **scores[c],
            }
        )
    crops = [
        {
            "face_id": face_ids[c.no],
            "crop": c.crop.jpeg,
            "crop_width": c.crop.width,
            "crop_height": c.crop.height,
            "face_box": list(c.crop.face_box),
            "thumb": c.crop.thumb,
        }
        for kept in keep.values()
        for pool in kept.crops.values()
        for c in pool
    ]
    crops.sort(key=lambda r: r["face_id"])
    return _tables(stack.embedder.dim, videos_row, clips=clips, faces=faces, tracks=tracks, crops=crops, errors=errors)


def _track_embeddings(rows: list[_FaceRow]) -> dict[int, np.ndarray]:
    """Quality-weighted mean of each tracker track's embedded faces, L2-normalised."""
    sums: dict[int, np.ndarray] = {}
    for r in rows:
        if r.embedding is not None:
            sums[r.track_key] = sums.get(r.track_key, 0) + max(r.quality, 1e-3) * r.embedding
    return {k: (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32) for k, v in sums.items()}


def _table(rows: list[dict], sch: pa.Schema) -> pa.Table:
    version = {"pipeline_version": schema.PIPELINE_VERSION}
    cols = {f.name: [] for f in sch}
    for row in rows:
        row = {**row, **version}
        for name, values in cols.items():
            value = row.get(name)
            values.append(value.tolist() if isinstance(value, np.ndarray) else value)
    return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in sch}, schema=sch)


def _tables(dim: int, videos_row: dict, *, clips=(), faces=(), tracks=(), crops=(), errors=()) -> dict[str, pa.Table]:
    return {
        "videos": _table([videos_row], schema.VIDEOS),
        "clips": _table(list(clips), schema.CLIPS),
        "faces": _table(list(faces), schema.faces_schema(dim)),
        "tracks": _table(list(tracks), schema.tracks_schema(dim)),
        "crops": _table(list(crops), schema.CROPS),
        "errors": _table(list(errors), schema.ERRORS),
    }
