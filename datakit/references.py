"""Global pass: reference faces per identity and view bin (the ``reference_views`` table).

Candidates are the faces that have a crop (the per-video stage kept crops only for the best few faces
per track and view bin), a view bin, and a track linked to an identity. Within one (identity, view)
they are ranked for *diversity first, then quality*:

1. round over tracks: every track's best face comes before any track's second best, so that the
   top ranks come from different tracks (different moments, lighting, expressions);
2. within a round, the best track of each clip comes before a second track of the same clip, so that
   ranks also spread over clips and the sample builder can pick a reference from another clip than
   the one it trains on (no copy-paste of the target frames);
3. then by quality (descending), then by face_id so that ties are deterministic.

The first ``per_view`` are kept; rank 0 is the best.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.schema import PIPELINE_VERSION, REFERENCE_VIEWS, VIEWS

__all__ = ["select_references"]


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


def select_references(faces: pa.Table, crops: pa.Table, tracks: pa.Table, *, per_view: int = 4) -> pa.Table:
    """The best ``per_view`` reference faces per identity and view bin (schema ``REFERENCE_VIEWS``).

    ``faces`` (faces schema), ``crops`` (CROPS) and ``tracks`` (linked: identity_id filled). Rows are
    sorted by identity_id, view in ``VIEWS`` order, rank.
    """
    face_cols = ["face_id", "track_id", "clip_id", "video_id", "frame_index", "t_s"]
    face_cols += ["yaw_deg", "pitch_deg", "roll_deg", "quality", "view"]
    cand = faces.select(face_cols).filter(pc.is_in(faces.column("view"), pa.array(VIEWS)))
    cand = cand.join(crops.select(["face_id", "crop"]), "face_id", join_type="inner")
    links = tracks.select(["track_id", "identity_id"]).filter(pc.is_valid(tracks.column("identity_id")))
    cand = cand.join(links, "track_id", join_type="inner")
    if cand.num_rows == 0 or per_view <= 0:
        return REFERENCE_VIEWS.empty_table()
    cand = cand.combine_chunks()

    ident, track, clip, face = (_codes(cand.column(c)) for c in ("identity_id", "track_id", "clip_id", "face_id"))
    view_rank = {v: i for i, v in enumerate(VIEWS)}
    view = np.array([view_rank[v] for v in cand.column("view").to_pylist()], np.int64)
    neg_q = -cand.column("quality").to_numpy().astype(np.float64)

    # 1. Each face's position among its track's faces of the same view (0 = the track's best).
    by_track = np.lexsort((face, neg_q, track, view, ident))
    track_round = _position_in_group(by_track, ident, view, track)
    # 2. Within a round, each clip's best track first.
    by_clip = np.lexsort((face, neg_q, track_round, clip, view, ident))
    clip_round = _position_in_group(by_clip, ident, view, clip, track_round)
    # 3. Final order and ranks within (identity, view).
    final = np.lexsort((face, neg_q, clip_round, track_round, view, ident))
    rank = _position_in_group(final, ident, view)
    keep = final[rank[final] < per_view]

    out = cand.take(pa.array(keep))
    return pa.table(
        {
            **{name: out.column(name) for name in ("identity_id", "view")},
            "rank": pa.array(rank[keep], pa.int32()),
            **{name: out.column(name) for name in REFERENCE_VIEWS.names[3:-1]},
            "pipeline_version": pa.array([PIPELINE_VERSION] * len(keep), pa.string()),
        }
    ).cast(REFERENCE_VIEWS)
