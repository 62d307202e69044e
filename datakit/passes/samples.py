"""Global pass: training samples (the ``samples`` table), one per clip with a linked person.

A sample is a target clip (video path, time range, caption) and, for each person on screen, the
reference crops per view slot the model is conditioned on:

- people are ordered by screen time in the clip (sum of their track durations, then number of faces,
  then identity_id), so identity 0 is the main subject;
- for each view slot (``VIEWS`` order), the best ``refs_per_view`` references (by ``rank``) that come
  from *another context* than the target (another recording, :mod:`datakit.passes.contexts`): a
  reference cut from the target's own frames, or from a copy of them in another file, lets the model
  copy-paste instead of learning the identity. Without one, the best from another clip of the target's
  context (``same_context=true``); only when no other clip has that view does the slot fall back to the
  best reference from the target clip (``same_clip=true``). Where a context is unknown (null
  ``context_id``: reference views picked without contexts), another video counts as another context. A
  view with no reference at all is left out (the model fills absent slots with its proxy tokens);
- a person without any reference still appears, with an empty list (they are on screen).

Each reference carries its JPEG ``crop`` and the ``face_box`` inside it (x0, y0, x1, y1 in crop pixels),
so a trainer can re-crop around the face whatever the crop size.

``sample_id`` is ``"smp_" + sha1(clip_id)[:16]``: stable across re-runs.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from datakit.schema import PIPELINE_VERSION, SAMPLES, VIEWS

__all__ = ["build_samples", "num_other_context", "sample_id_for"]


def sample_id_for(clip_id: str) -> str:
    """The stable id of the sample whose target is ``clip_id``."""
    return "smp_" + hashlib.sha1(clip_id.encode("utf-8")).hexdigest()[:16]


def _people_per_clip(tracks: pa.Table) -> dict[str, list[dict]]:
    """clip_id -> the clip's identities (identity_id, track_ids), most screen time first."""
    cols = ["clip_id", "identity_id", "track_id", "start_s", "end_s", "num_faces"]
    per_clip: dict[str, dict[str, list]] = defaultdict(dict)
    for clip, ident, track, start, end, num_faces in zip(*(tracks.column(c).to_pylist() for c in cols), strict=True):
        if ident is None:
            continue
        entry = per_clip[clip].setdefault(ident, [0.0, 0, []])
        entry[0] += max(end - start, 0.0)
        entry[1] += num_faces
        entry[2].append((start, track))
    return {
        clip: [
            {"identity_id": ident, "track_ids": [t for _, t in sorted(tracks_)]}
            for ident, (_, _, tracks_) in sorted(people.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
        ]
        for clip, people in per_clip.items()
    }


def _references_by_slot(reference_views: pa.Table) -> dict[tuple[str, str], list[dict]]:
    """(identity_id, view) -> its references, best rank first."""
    by_slot: dict[tuple[str, str], list[dict]] = defaultdict(list)
    columns = ["identity_id", "view", "rank", "face_id", "clip_id", "video_id", "context_id", "crop", "face_box"]
    for row in reference_views.select(columns).to_pylist():
        by_slot[row["identity_id"], row["view"]].append(row)
    for rows in by_slot.values():
        rows.sort(key=lambda r: (r["rank"], r["face_id"]))
    return by_slot


def _same_context(ref: dict, target: dict) -> bool:
    """Whether a reference shows the target clip's recording (its own clip, or a copy of the footage)."""
    if ref["clip_id"] == target["clip_id"]:
        return True
    if ref["context_id"] is None or target.get("context_id") is None:
        return ref["video_id"] == target["video_id"]  # contexts unknown: a video is one recording
    return ref["context_id"] == target["context_id"]


def _pick(candidates: list[dict], target: dict, refs_per_view: int) -> list[dict]:
    """Up to ``refs_per_view`` references from other contexts; else from other clips of the target's context;
    else the best one from the target clip."""
    if refs_per_view <= 0:
        return []
    others = [r for r in candidates if not _same_context(r, target)][:refs_per_view]
    if not others:
        others = [r for r in candidates if r["clip_id"] != target["clip_id"]][:refs_per_view]
    chosen = others or candidates[:1]
    return [
        {
            "view": r["view"],
            "face_id": r["face_id"],
            "clip_id": r["clip_id"],
            "same_clip": r["clip_id"] == target["clip_id"],
            "context_id": r["context_id"],
            "same_context": _same_context(r, target),
            "crop": r["crop"],
            "face_box": r["face_box"],
        }
        for r in chosen
    ]


def build_samples(
    clips: pa.Table,
    tracks: pa.Table,
    reference_views: pa.Table,
    videos: pa.Table,
    *,
    refs_per_view: int = 1,
    min_clip_s: float = 0.0,
) -> pa.Table:
    """One training sample per clip of at least ``min_clip_s`` seconds with a linked person (``SAMPLES``).

    ``clips`` (CLIPS), ``tracks`` (linked), ``reference_views`` (REFERENCE_VIEWS), ``videos`` (VIDEOS,
    for the path). Rows are sorted by video_id, start_s, clip_id. Raises ``ValueError`` when a clip's
    video is missing from ``videos`` (the path is required).
    """
    people = _people_per_clip(tracks)
    by_slot = _references_by_slot(reference_views)
    paths = dict(zip(videos.column("video_id").to_pylist(), videos.column("path").to_pylist(), strict=True))
    rows = []
    for clip in sorted(clips.to_pylist(), key=lambda c: (c["video_id"], c["start_s"], c["clip_id"])):
        on_screen = people.get(clip["clip_id"])
        if not on_screen or clip["end_s"] - clip["start_s"] < min_clip_s:
            continue
        if clip["video_id"] not in paths:
            raise ValueError(f"clip {clip['clip_id']}: video {clip['video_id']} is not in the videos table")
        identities = [
            {
                **person,
                "references": [
                    ref
                    for view in VIEWS
                    for ref in _pick(by_slot.get((person["identity_id"], view), []), clip, refs_per_view)
                ],
            }
            for person in on_screen
        ]
        rows.append(
            {
                "sample_id": sample_id_for(clip["clip_id"]),
                "clip_id": clip["clip_id"],
                "video_id": clip["video_id"],
                "context_id": clip.get("context_id"),
                "video_path": paths[clip["video_id"]],
                "start_s": clip["start_s"],
                "end_s": clip["end_s"],
                "caption": clip.get("caption"),
                "identities": identities,
                "pipeline_version": PIPELINE_VERSION,
            }
        )
    return pa.Table.from_pylist(rows, schema=SAMPLES) if rows else SAMPLES.empty_table()


def num_other_context(samples: pa.Table) -> int:
    """How many samples have at least one reference from another context than their target clip
    (``same_context`` false): the samples that teach identity beyond one recording."""
    if samples.num_rows == 0:
        return 0
    people = samples.column("identities").combine_chunks()
    refs = pc.struct_field(pc.list_flatten(people), "references")
    other = pc.invert(pc.fill_null(pc.struct_field(pc.list_flatten(refs), "same_context"), True))
    sample_of_ref = pc.list_parent_indices(people).take(pc.list_parent_indices(refs))
    return len(pc.unique(sample_of_ref.filter(other)))
