"""Reference faces per identity and view bin (the ``reference_views`` table), picked from the candidate
crops that every video kept.

The candidates are chosen per video (:mod:`datakit.video.crops`: per track and view bin, a few crops spread
in time); :func:`offer_spread` and :class:`CropCandidate` are re-exported here from there.

**Global** (:func:`select_references`): candidates are the faces that have a crop, a view bin and a track
linked to an identity. Within one (identity, view) they are ranked for *diversity first, then quality*:

1. round over tracks: every track's best face comes before any track's second best, so that the top
   ranks come from different tracks (different moments, lighting, expressions);
2. within a round, the best track of each clip comes before a second track of the same clip, and
3. the best clip of each video before a second clip of the same video, and
4. the best video of each *context* (one recording, :mod:`datakit.passes.contexts`) before a second video
   of the same context (a copy of the footage in another file), so that ranks spread over clips, videos
   and recordings and the sample builder can pick a reference from another context than the clip it
   trains on (no copy-paste of the target frames, not even from a re-upload of them);
5. then by quality (descending), then by face_id so that ties are deterministic.

Walking that order, a candidate that is a *near-duplicate* of a reference already picked in the same
(identity, view) is skipped: same footage re-encoded in two files, a shot split into two clips at
``max_clip_s``, a speaker who does not move. The first ``per_view`` kept are the references; rank 0 is
the best.

**Near-duplicate measure**: normalised cross-correlation (NCC) of the crops' 32x32 gray thumbnails (the
whole head crop squashed to 32x32: face plus hair, clothes and background, so the same pose in another
context is *not* a duplicate; works for profiles, which have no embedding). See ``NEAR_DUPLICATE_NCC``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.faces.quality import THUMB_SIDE
from datakit.schema import PIPELINE_VERSION, REFERENCE_VIEWS, VIEWS
from datakit.video.crops import CropCandidate, offer_spread

__all__ = ["NEAR_DUPLICATE_NCC", "CropCandidate", "offer_spread", "select_references", "thumb_similarity"]

#: Two crops whose thumbnails correlate at least this much are near-duplicates. Measured on the shipped
#: footage (all 222 faces of ``datakit build`` over ../shared/media/videos, yunet stack; 32x32 gray of the
#: 1.6x head crop; pairs of faces in one view bin of one identity):
#:
#: ======================================================  ====  ======  =====  =====  =====
#: pair                                                       n     min    p50    max  >=0.8
#: ======================================================  ====  ======  =====  =====  =====
#: same footage in two files (single_face / face_then_..)    64   0.923  0.979  0.997   100%
#: one track, consecutive sampled frames (1/3 s)            166  -0.068  0.933  1.000    82%
#: one track, 0.4-2 s apart                                 453  -0.073  0.858  0.996    63%
#: one track, >= 2 s apart                                  676   0.192  0.695  0.981    25%
#: one shot cut into clips at max_clip_s (pexels, foreman)  869   0.463  0.670  0.997    10%
#: other track, same clip                                    33   0.121  0.416  0.792     0%
#: other video, other footage                               180  -0.012  0.199  0.333     0%
#: ======================================================  ====  ======  =====  =====  =====
#:
#: Other footage stays far below (<= 0.333) and copies of one footage far above (>= 0.923): 0.80 is 0.47
#: above the first and 0.12 below the second. Inside one shot the value is a judgement, checked by eye on
#: pairs >= 1.5 s apart: at 0.82-0.86 the two pictures are the same pose and expression (Michelle Obama in
#: the Hamilton audience 2 s apart: 0.838), below 0.80 the expression or a hand over the face has changed.
#: The median similarity of two faces of one track falls to 0.80 at ~2 s apart, hence ``crop_min_gap_s``
#: = 2 s.
NEAR_DUPLICATE_NCC = 0.80


def _thumb_vectors(thumbs: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n, THUMB_SIDE**2) float32 rows, zero-mean and unit-norm, so a dot product is the NCC. A missing,
    wrongly sized or flat (one-colour) thumbnail gives a zero row: never a near-duplicate of anything."""
    size = THUMB_SIDE * THUMB_SIDE
    values = thumbs.to_pylist()
    out = np.zeros((len(values), size), np.float32)
    ok = np.array([v is not None and len(v) == size for v in values], bool)
    if ok.any():
        rows = np.frombuffer(b"".join(v for v, good in zip(values, ok, strict=True) if good), np.uint8)
        rows = rows.reshape(-1, size).astype(np.float32)
        rows -= rows.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(rows, axis=1, keepdims=True)
        out[ok] = np.where(norm > 1e-3, rows / np.maximum(norm, 1e-3), 0.0)
    return out


def thumb_similarity(a: bytes, b: bytes) -> float:
    """NCC of two crop thumbnails (the CROPS ``thumb`` bytes), in -1..1; 0 when one is flat or malformed."""
    va, vb = _thumb_vectors(pa.array([a, b], pa.binary()))
    return float(va @ vb)


def _codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Order-preserving integer codes of a string column (a < b as strings iff code(a) < code(b))."""
    dense = pc.rank(column, sort_keys="ascending", tiebreaker="dense")  # 1-based
    return dense.to_numpy().astype(np.int64)


def _position_in_group(order: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """For rows sorted by ``order``, each row's 0-based position within its run of equal ``keys``."""
    n = len(order)
    pos = np.empty(n, np.int64)
    if n == 0:
        return pos
    new_group = np.zeros(n, bool)
    new_group[0] = True
    for key in keys:
        k = key[order]
        new_group[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(new_group)
    lengths = np.diff(np.append(starts, n))
    pos[order] = np.arange(n) - np.repeat(starts, lengths)
    return pos


def _pick_distinct(final: np.ndarray, group: np.ndarray, vectors: np.ndarray, per_view: int, ncc: float) -> list:
    """Walk ``final`` (rows sorted by group, then preference); per group keep up to ``per_view`` rows whose
    thumbnail NCC with every row already kept in that group is below ``ncc``."""
    keep: list[int] = []
    g = group[final]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(final)], strict=True):
        picked: list[int] = []
        for row in final[start:end]:
            if picked and float(np.max(vectors[picked] @ vectors[row])) >= ncc:
                continue  # a near-duplicate of a reference already picked in this (identity, view)
            picked.append(int(row))
            if len(picked) == per_view:
                break
        keep.extend(picked)
    return keep


def select_references(
    faces: pa.Table,
    crops: pa.Table,
    tracks: pa.Table,
    *,
    per_view: int = 4,
    near_duplicate_ncc: float = NEAR_DUPLICATE_NCC,
    contexts: pa.Table | None = None,
) -> pa.Table:
    """Up to ``per_view`` diverse reference faces per identity and view bin (schema ``REFERENCE_VIEWS``).

    ``faces`` (faces schema), ``crops`` (CROPS) and ``tracks`` (linked: identity_id filled). Rows are
    sorted by identity_id, view in ``VIEWS`` order, rank. No two rows of one (identity, view) have crop
    thumbnails with NCC >= ``near_duplicate_ncc``. ``contexts`` (clip_id, context_id; from
    :func:`datakit.passes.contexts.context_pass`) gives each reference its ``context_id``; without it (or for
    a clip it lacks) the context is unknown (null) and every video counts as a context of its own.
    """
    face_cols = ["face_id", "track_id", "clip_id", "video_id", "frame_index", "t_s"]
    face_cols += ["yaw_deg", "pitch_deg", "roll_deg", "quality", "view"]
    cand = faces.select(face_cols).filter(pc.is_in(faces.column("view"), pa.array(VIEWS)))
    crop_rows = crops.select(["face_id", "crop"]).append_column("crop_row", pa.array(np.arange(crops.num_rows)))
    cand = cand.join(crop_rows, "face_id", join_type="inner")  # Acero joins no fixed-size list: taken below
    links = tracks.select(["track_id", "identity_id"]).filter(pc.is_valid(tracks.column("identity_id")))
    cand = cand.join(links, "track_id", join_type="inner")
    if contexts is None:
        contexts = pa.table({"clip_id": pa.array([], pa.string()), "context_id": pa.array([], pa.string())})
    cand = cand.join(contexts.select(["clip_id", "context_id"]), "clip_id", join_type="left outer")
    if cand.num_rows == 0 or per_view <= 0:
        return REFERENCE_VIEWS.empty_table()
    cand = cand.combine_chunks()
    crop_row = cand.column("crop_row").to_numpy()
    cand = cand.append_column("face_box", crops.column("face_box").take(pa.array(crop_row)))

    ident, track, clip, video, face = (
        _codes(cand.column(c)) for c in ("identity_id", "track_id", "clip_id", "video_id", "face_id")
    )
    view_rank = {v: i for i, v in enumerate(VIEWS)}
    view = np.array([view_rank[v] for v in cand.column("view").to_pylist()], np.int64)
    neg_q = -cand.column("quality").to_numpy().astype(np.float64)

    # 1. Each face's position among its track's faces of the same view (0 = the track's best).
    by_track = np.lexsort((face, neg_q, track, view, ident))
    track_round = _position_in_group(by_track, ident, view, track)
    # 2. Within a round, each clip's best track first.
    by_clip = np.lexsort((face, neg_q, track_round, clip, view, ident))
    clip_round = _position_in_group(by_clip, ident, view, clip, track_round)
    # 3. Within those, each video's best clip first.
    by_video = np.lexsort((face, neg_q, clip_round, track_round, video, view, ident))
    video_round = _position_in_group(by_video, ident, view, video, track_round, clip_round)
    # 4. Within those, each context's best video first (an unknown context: the video is one).
    context = _codes(pc.coalesce(cand.column("context_id"), cand.column("video_id")))
    by_context = np.lexsort((face, neg_q, video_round, context, clip_round, track_round, view, ident))
    context_round = _position_in_group(by_context, ident, view, track_round, clip_round, context, video_round)
    # 5. Preference order within (identity, view); then drop near-duplicates while walking it.
    final = np.lexsort((face, neg_q, context_round, video_round, clip_round, track_round, view, ident))
    vectors = _thumb_vectors(crops.column("thumb").take(pa.array(crop_row)))
    group = ident * len(VIEWS) + view
    keep = np.array(_pick_distinct(final, group, vectors, per_view, near_duplicate_ncc), np.int64)
    rank = _position_in_group(np.arange(len(keep)), group[keep])

    out = cand.take(pa.array(keep))
    return pa.table(
        {
            **{name: out.column(name) for name in ("identity_id", "view")},
            "rank": pa.array(rank, pa.int32()),
            **{name: out.column(name) for name in REFERENCE_VIEWS.names[3:-1]},
            "pipeline_version": pa.array([PIPELINE_VERSION] * len(keep), pa.string()),
        }
    ).cast(REFERENCE_VIEWS)
