"""What a query finds: :class:`Match` (an identity, or a track outside every identity) and its clips.

The vector hits of one run are grouped by identity (:func:`group_hits`), then :func:`attach_clips` fills in
each match's clips, counts and views with pyarrow datasets filtered to the matched ids only
(tracks -> clips -> videos), never by reading whole tables into Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit import schema
from datakit.store import RunDir

__all__ = ["ClipRef", "Match", "attach_clips", "group_hits", "match_key"]

TRACK_COLUMNS = ["track_id", "clip_id", "video_id", "identity_id", "drop_reason", "views"]
CLIP_COLUMNS = ["clip_id", "start_s", "end_s", "caption", "drop_reason"]


@dataclass(slots=True)
class ClipRef:
    """A clip in which a match appears."""

    clip_id: str
    video_id: str
    video_path: str  # relative to the run's source folder (run.json config.src)
    start_s: float
    end_s: float
    track_ids: list[str]
    caption: str | None = None
    drop_reason: str | None = None  # the clip filter that dropped the clip, if any

    def to_dict(self) -> dict:
        """JSON-able form (times rounded to ms), as ``datakit query --json`` prints it."""
        return {
            "clip_id": self.clip_id,
            "video_id": self.video_id,
            "video_path": self.video_path,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "track_ids": self.track_ids,
            "caption": self.caption,
            "drop_reason": self.drop_reason,
        }


@dataclass(slots=True)
class Match:
    """One identity (or one track outside every identity) that matches a query."""

    identity_id: str | None
    score: float
    run: str
    kind: str  # "identity", or "track" for a track outside every identity
    track_id: str | None  # the best-matching track (the track itself when kind == "track")
    num_clips: int = 0
    num_videos: int = 0
    views: list[str] = field(default_factory=list)
    clips: list[ClipRef] = field(default_factory=list)
    track_drop_reason: str | None = None
    query: dict | None = None

    def to_dict(self) -> dict:
        """JSON-able form, as ``datakit query --json`` prints it."""
        return {
            "identity_id": self.identity_id,
            "score": round(self.score, 4),
            "kind": self.kind,
            "track_id": self.track_id,
            "track_drop_reason": self.track_drop_reason,
            "run": self.run,
            "num_clips": self.num_clips,
            "num_videos": self.num_videos,
            "views": self.views,
            "clips": [c.to_dict() for c in self.clips],
            "query": self.query,
        }


def match_key(identity_id: str | None, track_id: str | None) -> tuple[str, str | None]:
    """What a hit counts towards: its identity, or its own track when it is outside every identity."""
    return ("identity", identity_id) if identity_id is not None else ("track", track_id)


def group_hits(rows: pa.Table, ids: np.ndarray, sims: np.ndarray) -> dict[tuple[str, str], tuple[float, str | None]]:
    """Hits (row ids into ``rows``, best first) grouped by :func:`match_key`: best score, best track."""
    hit = rows.take(pa.array(ids, pa.int64()))
    kinds = hit.column("kind").to_pylist()
    idents = hit.column("identity_id").to_pylist()
    tracks = hit.column("track_id").to_pylist()
    groups: dict[tuple[str, str], tuple[float, str | None]] = {}
    for kind, ident, track, s in zip(kinds, idents, tracks, sims.tolist(), strict=True):  # best first
        key = match_key(ident, track)
        best, best_track = groups.get(key, (s, None))
        if kind == "track" and best_track is None:
            best_track = track
        groups[key] = (max(best, s), best_track)
    return groups


def attach_clips(run: RunDir, matches: list[Match]) -> None:
    """Fill clips, counts and views of ``matches`` (all of ``run``) with filtered pyarrow reads and joins."""
    ident_ids = [m.identity_id for m in matches if m.identity_id is not None]
    orphan_ids = [m.track_id for m in matches if m.identity_id is None and m.track_id]
    tracks = _matched_tracks(run, ident_ids, orphan_ids)
    if tracks is None:
        return
    views_of = dict(zip(tracks["track_id"].to_pylist(), tracks["views"].to_pylist(), strict=True))  # matched only
    clips_of, drop_of = _clip_refs(_with_clips_and_videos(run, tracks.drop_columns(["views"])))
    info = _identity_info(run, ident_ids)
    for m in matches:
        m.clips = list(clips_of.get(match_key(m.identity_id, m.track_id), {}).values())
        if m.identity_id is not None and m.identity_id in info:
            row = info[m.identity_id]
            m.num_clips, m.num_videos, m.views = row["num_clips"], row["num_videos"], list(row["views"] or [])
        else:  # a track outside every identity: its own clips and views
            m.num_clips = len(m.clips)
            m.num_videos = len({c.video_id for c in m.clips})
            m.views = list(views_of.get(m.track_id or "") or [])
        if m.track_id is not None:
            m.track_drop_reason = drop_of.get(m.track_id)


def _matched_tracks(run: RunDir, ident_ids: list[str], orphan_ids: list[str]) -> pa.Table | None:
    """The tracks of the matched identities and the matched unlinked tracks (None: no tracks table)."""
    tracks = run.dataset("tracks")
    if tracks is None:
        return None
    cond = None
    if ident_ids:
        cond = pc.field("identity_id").isin(ident_ids)
    if orphan_ids:
        by_track = pc.field("track_id").isin(orphan_ids)
        cond = by_track if cond is None else (cond | by_track)
    return tracks.to_table(columns=TRACK_COLUMNS, filter=cond)


def _with_clips_and_videos(run: RunDir, tracks: pa.Table) -> pa.Table:
    """``tracks`` joined with their clips (time range, caption, drop reason) and videos (path), sorted."""
    clips_ds, videos_ds = run.dataset("clips"), run.dataset("videos")
    clips = (
        clips_ds.to_table(columns=CLIP_COLUMNS, filter=pc.field("clip_id").isin(pc.unique(tracks["clip_id"])))
        if clips_ds is not None
        else schema.CLIPS.empty_table().select(CLIP_COLUMNS)
    ).rename_columns([*CLIP_COLUMNS[:-1], "clip_drop_reason"])  # the track has a drop_reason of its own
    videos = (
        videos_ds.to_table(
            columns=["video_id", "path"], filter=pc.field("video_id").isin(pc.unique(tracks["video_id"]))
        )
        if videos_ds is not None
        else schema.VIDEOS.empty_table().select(["video_id", "path"])
    )
    joined = tracks.join(clips, "clip_id", join_type="left outer").join(videos, "video_id", join_type="left outer")
    return joined.sort_by([("video_id", "ascending"), ("start_s", "ascending"), ("track_id", "ascending")])


def _clip_refs(joined: pa.Table) -> tuple[dict[tuple, dict[str, ClipRef]], dict[str, str | None]]:
    """Per match key, its clips in order (each with the matched tracks in it); per track, its drop reason."""
    clips_of: dict[tuple, dict[str, ClipRef]] = {}
    drop_of: dict[str, str | None] = {}
    for r in joined.to_pylist():  # only the matched identities' tracks
        refs = clips_of.setdefault(match_key(r["identity_id"], r["track_id"]), {})
        ref = refs.get(r["clip_id"])
        if ref is None:
            ref = refs[r["clip_id"]] = ClipRef(
                clip_id=r["clip_id"],
                video_id=r["video_id"],
                video_path=r["path"] or "",
                start_s=r["start_s"] if r["start_s"] is not None else float("nan"),
                end_s=r["end_s"] if r["end_s"] is not None else float("nan"),
                track_ids=[],
                caption=r["caption"],
                drop_reason=r["clip_drop_reason"],
            )
        ref.track_ids.append(r["track_id"])
        drop_of[r["track_id"]] = r["drop_reason"]
    return clips_of, drop_of


def _identity_info(run: RunDir, ident_ids: list[str]) -> dict[str, dict]:
    """identity_id -> its counts and views, for the matched identities."""
    idents = run.dataset("identities")
    if not ident_ids or idents is None:
        return {}
    t = idents.to_table(
        columns=["identity_id", "num_clips", "num_videos", "views"], filter=pc.field("identity_id").isin(ident_ids)
    )
    return {r["identity_id"]: r for r in t.to_pylist()}
