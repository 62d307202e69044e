"""The rows one video contributes to the manifests, with deterministic ids.

:func:`videos_row` is the one builder of a ``videos`` row, whatever became of the file: processed whole
(:mod:`datakit.video.job`), split into segments (its row written once the last one is in), failed, or a
byte-identical duplicate of another file. :func:`video_tables` turns what the frame loop of one video (or of
one segment of a long one) collected into its ``clips``, ``faces``, ``tracks``, ``crops`` and ``errors``
rows; the ids depend only on the video's content, so a split run and a resumed one get the ids of an
uninterrupted run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from datakit import schema
from datakit.video.crops import CropCandidate
from datakit.video.decode import ProbeInfo, VideoError
from datakit.video.discover import SourceFile
from datakit.video.quality import QualityScan
from datakit.video.shots import Segment

#: the columns of a ``videos`` row that come from the container (``probe``)
PROBE_COLUMNS = ("duration_s", "fps", "width", "height", "codec")


def probe_columns(info: ProbeInfo) -> dict:
    """The container's columns of a ``videos`` row (a long video's plan stores them for its row)."""
    return {
        "duration_s": info.duration_s,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "codec": info.codec,
    }


def videos_row(
    src: SourceFile,
    status: str,
    *,
    probe: dict | None = None,
    num_frames: int | None = None,
    error: str | None = None,
    clips: list[Segment] | None = None,
    video_id: str | None = None,
) -> dict:
    """The ``videos`` row of one source file.

    Args:
        status: ok | no_faces | partial | failed | duplicate.
        probe: :func:`probe_columns` of the file; none when it could not be probed.
        num_frames: the frames actually decoded.
        error: the first error of the file (the ``errors`` table has them all).
        clips: the clips of a decoded video: when the container gives no duration, the end of the last one is it.
        video_id: the row's id when it is not the content id (a duplicate's comes from its path, so that
            ``video_id`` stays unique in ``videos``).
    """
    row = {
        "video_id": video_id or src.video_id,
        "path": src.rel_path,
        "status": status,
        **dict.fromkeys(PROBE_COLUMNS),
        **(probe or {}),
        "num_frames": num_frames,
        "size_bytes": src.size_bytes,
        "error": error,
        "pipeline_version": schema.PIPELINE_VERSION,
    }
    if clips is not None and not row["duration_s"]:
        row["duration_s"] = clips[-1].end_s if clips else None
    return row


def videos_table(row: dict) -> pa.Table:
    """One ``videos`` row as a table of the manifest's schema."""
    return pa.Table.from_pylist([row], schema=schema.VIDEOS)


def error_row(error: VideoError, src: SourceFile) -> dict:
    """The ``errors`` row of one problem with a source file."""
    return {
        "stage": error.stage,
        "item": src.rel_path,
        "video_id": src.video_id,
        "error_type": error.error_type,
        "message": error.message,
    }


@dataclass(slots=True)
class FaceRow:
    """One face the frame loop kept, before it has ids (those need the video's clips)."""

    frame_index: int
    t_s: float
    slot: int  # order within the frame (left to right)
    track_key: int  # the tracker's track, not yet cut at clip boundaries
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
class ScanRows:
    """What the frame loop of one video, or of one segment of a long video, collected: the input of
    :func:`video_tables`."""

    src: SourceFile
    clips: list[Segment]  # the clips of the video (of the segment)
    faces: list[FaceRow]
    crops: list[CropCandidate]  # every track's kept candidate crops, all view bins
    quality: QualityScan
    errors: list[dict]
    hashes: list[tuple[int, float, int]] = ()  # (frame index, t_s, hash) of the sampled frames: the fingerprint
    clip_offset: int = 0  # the index of the first clip in the whole video, for a segment of a long one


@dataclass(slots=True)
class _Ids:
    """The deterministic ids of one video's clips, track pieces and faces, and which face goes where.

    A track piece is a tracker track cut at clip boundaries; within a clip, pieces are numbered in order of
    appearance.
    """

    clip_ids: list[str]
    clip_starts: np.ndarray  # start frame of every clip
    clip_of: list[int]  # the clip of every face
    pieces: dict[tuple[int, int], list[int]]  # (clip, tracker key) -> its faces
    track_ids: dict[tuple[int, int], str]  # (clip, tracker key) -> track_id
    tracks_per_clip: dict[int, int]
    face_ids: list[str]

    @classmethod
    def of(cls, scan: ScanRows) -> _Ids:
        vid, rows = scan.src.video_id, scan.faces
        clip_ids = [f"{vid}_c{n + scan.clip_offset:04d}" for n in range(len(scan.clips))]
        starts = np.array([s.start_frame for s in scan.clips])
        clip_of = [int(np.searchsorted(starts, r.frame_index, side="right") - 1) for r in rows]
        pieces: dict[tuple[int, int], list[int]] = defaultdict(list)
        for no, (r, c) in enumerate(zip(rows, clip_of, strict=True)):
            pieces[(c, r.track_key)].append(no)
        per_clip: dict[int, int] = defaultdict(int)
        track_ids: dict[tuple[int, int], str] = {}
        for c, key in sorted(pieces, key=lambda p: (p[0], rows[pieces[p][0]].frame_index, rows[pieces[p][0]].slot)):
            track_ids[(c, key)] = f"{clip_ids[c]}_t{per_clip[c]:02d}"
            per_clip[c] += 1
        face_ids = [f"{vid}_f{r.frame_index:06d}_{r.slot}" for r in rows]
        return cls(clip_ids, starts, clip_of, pieces, track_ids, per_clip, face_ids)


def video_tables(dim: int, videos: dict, scan: ScanRows) -> dict[str, pa.Table]:
    """The per-video tables of a scan (``videos``: its :func:`videos_row`; ``dim``: the embedding width)."""
    ids = _Ids.of(scan)
    return tables(
        dim,
        videos,
        clips=_clip_rows(scan, ids),
        faces=_face_rows(scan, ids),
        tracks=_track_rows(scan, ids),
        crops=_crop_rows(scan, ids),
        errors=scan.errors,
    )


def _face_rows(scan: ScanRows, ids: _Ids) -> list[dict]:
    vid = scan.src.video_id
    return [
        {
            "face_id": ids.face_ids[no],
            "clip_id": ids.clip_ids[c],
            "track_id": ids.track_ids[(c, r.track_key)],
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
        for no, (r, c) in enumerate(zip(scan.faces, ids.clip_of, strict=True))
    ]


def _track_rows(scan: ScanRows, ids: _Ids) -> list[dict]:
    rows = scan.faces
    embedding = _track_embeddings(rows)
    tracks = []
    for (c, key), members in ids.pieces.items():
        views = {rows[m].view for m in members if rows[m].view}
        tracks.append(
            {
                "track_id": ids.track_ids[(c, key)],
                "clip_id": ids.clip_ids[c],
                "video_id": scan.src.video_id,
                "identity_id": None,
                "start_s": rows[members[0]].t_s,
                "end_s": rows[members[-1]].t_s,
                "num_faces": len(members),
                "num_embedded": sum(rows[m].embedding is not None for m in members),
                "views": [v for v in schema.VIEWS if v in views],
                "mean_quality": float(np.mean([rows[m].quality for m in members])),
                # every piece of a tracker track carries the whole track's embedding
                "embedding": embedding.get(key),
            }
        )
    tracks.sort(key=lambda t: t["track_id"])
    return tracks


def _clip_rows(scan: ScanRows, ids: _Ids) -> list[dict]:
    rows = scan.faces
    scores = scan.quality.clip_scores(
        ids.clip_starts, [r.frame_index for r in rows], [r.track_key for r in rows], [r.face_px for r in rows]
    )
    prints: dict[int, list[tuple[int, float, int]]] = defaultdict(list)
    for entry in scan.hashes:  # the clip of each hashed frame, as for faces
        prints[int(np.searchsorted(ids.clip_starts, entry[0], side="right") - 1)].append(entry)
    return [
        {
            "clip_id": ids.clip_ids[c],
            "video_id": scan.src.video_id,
            "start_s": seg.start_s,
            "end_s": seg.end_s,
            "start_frame": seg.start_frame,
            "end_frame": seg.end_frame,
            "num_frames": seg.num_frames,
            "shot": seg.shot,
            "num_faces": sum(1 for x in ids.clip_of if x == c),
            "num_tracks": ids.tracks_per_clip.get(c, 0),
            **scores[c],
            "fingerprint": [code for _, _, code in prints.get(c, [])],
            "fingerprint_t_s": [t for _, t, _ in prints.get(c, [])],
        }
        for c, seg in enumerate(scan.clips)
    ]


def _crop_rows(scan: ScanRows, ids: _Ids) -> list[dict]:
    crops = [
        {
            "face_id": ids.face_ids[c.no],
            "crop": c.crop.jpeg,
            "crop_width": c.crop.width,
            "crop_height": c.crop.height,
            "face_box": list(c.crop.face_box),
            "thumb": c.crop.thumb,
        }
        for c in scan.crops
    ]
    crops.sort(key=lambda r: r["face_id"])
    return crops


def _track_embeddings(rows: list[FaceRow]) -> dict[int, np.ndarray]:
    """Quality-weighted mean of each tracker track's embedded faces, L2-normalised."""
    sums: dict[int, np.ndarray] = {}
    for r in rows:
        if r.embedding is not None:
            sums[r.track_key] = sums.get(r.track_key, 0) + max(r.quality, 1e-3) * r.embedding
    return {k: (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32) for k, v in sums.items()}


def tables(dim: int, videos: dict, *, clips=(), faces=(), tracks=(), crops=(), errors=()) -> dict[str, pa.Table]:
    """One video's tables from its rows (a failed video has its ``videos`` and ``errors`` rows only)."""
    return {
        "videos": videos_table(videos),
        "clips": _table(list(clips), schema.CLIPS),
        "faces": _table(list(faces), schema.faces_schema(dim)),
        "tracks": _table(list(tracks), schema.tracks_schema(dim)),
        "crops": _table(list(crops), schema.CROPS),
        "errors": _table(list(errors), schema.ERRORS),
    }


def _table(rows: list[dict], sch: pa.Schema) -> pa.Table:
    version = {"pipeline_version": schema.PIPELINE_VERSION}
    cols = {f.name: [] for f in sch}
    for row in rows:
        row = {**row, **version}
        for name, values in cols.items():
            value = row.get(name)
            values.append(value.tolist() if isinstance(value, np.ndarray) else value)
    return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in sch}, schema=sch)
