"""Global pass: which clips show the same recording (the ``context_id`` of ``clips``).

Scraped corpora hold re-uploads and copies: one recording in two files, in other codecs, sizes and
containers, trimmed or spliced into a longer video. "References from another clip" are only worth
something when the other clip is another *context* (Phantom-Data's cross-context pairing): a reference
cut from a copy of the target's own footage lets the model copy-paste. Every clip carries a fingerprint
from the per-video job (:mod:`datakit.video.fingerprint`: a 64-bit DCT hash per sampled frame, with its
time), so this pass needs no decoding. Two clips are one context when

1. **they share footage**: ``min_run`` distinct frames of each pair up as near-identical (Hamming distance
   <= ``max_distance``) at one common time offset, give or take one sampling step. The distance does most
   of the separating (copies and other footage are far apart, see ``MAX_HASH_DISTANCE``); the run at one
   offset asks for a stretch of shared footage on both sides, so that scattered single-frame coincidences
   between long videos (a logo, a title card) link nothing; or
2. **one continues the other**: consecutive clips of one video, the last hashed frame of the first and the
   first of the next near-identical (a shot split at ``max_clip_s`` for length; a cut changes the picture).

Contexts are the connected components of those links; ``context_id`` is ``"ctx_" + sha1(smallest
clip_id)[:16]``, stable across re-runs. A clip without a fingerprint (no decodable, non-flat sampled
frame) is a context of its own.

**Finding candidate pairs** without comparing every pair of clips: each hash is cut into
``NUM_BANDS`` bands of 16 bits and clips sharing a band value are candidates (two hashes within 3 bits
always share a band; copies measure 0-8 bits, see ``MAX_HASH_DISTANCE``, and a copy has many frames, so
at least one collides). A band value shared by more than ``MAX_BUCKET_CLIPS`` clips (a common flat
pattern) is ignored as evidence. Candidates are then checked with exact distances.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from itertools import combinations, pairwise

import numpy as np
import pyarrow as pa

from datakit.store import RunDir, write_atomic
from datakit.video.fingerprint import hamming

__all__ = [
    "MAX_HASH_DISTANCE",
    "MIN_RUN",
    "assign_contexts",
    "attach_contexts",
    "context_pass",
    "shares_footage",
    "stored_contexts",
]

#: Two frame hashes at most this many bits apart show the same picture. Measured on the shipped footage
#: (../shared/media/videos, frames sampled at 3 fps, flat frames skipped): the frames of the two copies
#: (single_face.mp4 in face_then_noface_hevc.mov, and no_face.mp4 in its tail) are 0-8 bits from their
#: counterpart (20 frames: 16 at 0-2 bits, 3 at 4, 1 at 8, the last sampled frame of no_face.mp4); all
#: 17,538 pairs of frames of different footage are >= 18 bits apart (0.1% percentile 20, 1% 22, median 32), the two
#: Obama addresses (same man, same set) >= 30. 12 is 4 bits above the copies' worst and 6 below the
#: closest different footage. Harder copies made from five shipped videos (half size in MPEG-4 at 300 kb/s
#: trimmed by 2.3 s; 3/4 size in H.264 at 150 kb/s, 15 fps, trimmed by 1.1 s: 233 frames) are 0 bits from
#: the original at the median, but 5.6% of their frames are 13-24 bits away (foreman's hand-held motion
#: and Hamilton's cuts: the two files sample moments up to half a step apart), so no per-frame threshold
#: both keeps every copy frame and stays below other footage; the run of ``MIN_RUN`` frames carries it:
#: all ten copies share footage with their original at 12.
MAX_HASH_DISTANCE = 12
#: Frames that must match at one offset for two clips to share footage (3 = one second at 3 fps); a clip
#: with fewer hashed frames must match with all of them, and with at least two.
MIN_RUN = 3
NUM_BANDS = 4  #: 16-bit bands of a hash used to find candidate pairs
MAX_BUCKET_CLIPS = 64  #: a band value in more clips than this is not evidence of a copy

_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("context_id", pa.string(), nullable=False),
    ]
)


def shares_footage(
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    *,
    step_s: float,
    max_distance: int = MAX_HASH_DISTANCE,
    min_run: int = MIN_RUN,
) -> bool:
    """Whether two fingerprints ``(hashes, times)`` share a run of near-identical frames at one time offset.

    ``step_s``: the sampling step (1 / sample_fps); a frame of one matches a frame of the other when their
    hashes are within ``max_distance`` bits and their offset is within ``step_s`` of the run's offset (two
    files sample the same moment up to one step apart).
    """
    (ha, ta), (hb, tb) = a, b
    need = max(2, min(min_run, len(ha), len(hb)))
    if min(len(ha), len(hb)) < need:
        return False
    ia, ib = np.nonzero(hamming(ha, hb) <= max_distance)
    if len(set(ia.tolist())) < need:
        return False
    offsets = tb[ib] - ta[ia]
    for offset in np.unique(np.round(offsets / step_s) * step_s):
        near = np.abs(offsets - offset) <= step_s + 1e-6
        if len(set(ia[near].tolist())) >= need and len(set(ib[near].tolist())) >= need:
            return True
    return False


def _fingerprints(clips: pa.Table) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each clip's (hashes int64, times float64)."""
    hashes = clips.column("fingerprint").to_pylist()
    times = clips.column("fingerprint_t_s").to_pylist()
    return [
        (np.asarray(h or [], np.int64), np.asarray(t or [], np.float64)) for h, t in zip(hashes, times, strict=True)
    ]


def _candidate_pairs(prints: list[tuple[np.ndarray, np.ndarray]]) -> set[tuple[int, int]]:
    """Pairs of clips (i < j) with at least one 16-bit band value in common (see the module docstring)."""
    buckets: dict[tuple[int, int], set[int]] = defaultdict(set)
    for no, (hashes, _) in enumerate(prints):
        bits = hashes.view(np.uint64)
        for band in range(NUM_BANDS):
            for value in np.unique((bits >> np.uint64(16 * band)) & np.uint64(0xFFFF)).tolist():
                buckets[band, value].add(no)
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        if 1 < len(members) <= MAX_BUCKET_CLIPS:
            pairs.update(combinations(sorted(members), 2))
    return pairs


def _continues(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], max_distance: int) -> bool:
    """Whether ``second`` starts with the picture ``first`` ends on (a split for length, not a cut)."""
    if len(first[0]) == 0 or len(second[0]) == 0:
        return False
    return int(hamming(first[0][-1:], second[0][:1])[0, 0]) <= max_distance


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def assign_contexts(
    clips: pa.Table, *, sample_fps: float, max_distance: int = MAX_HASH_DISTANCE, min_run: int = MIN_RUN
) -> pa.Table:
    """``clips`` (CLIPS, with fingerprints) with ``context_id`` filled: one id per recording (module docstring)."""
    if clips.num_rows == 0:
        return clips
    prints = _fingerprints(clips)
    parent = list(range(clips.num_rows))

    def link(i: int, j: int) -> None:
        parent[_root(parent, i)] = _root(parent, j)

    step_s = 1.0 / sample_fps
    for i, j in _candidate_pairs(prints):
        if _root(parent, i) != _root(parent, j) and shares_footage(
            prints[i], prints[j], step_s=step_s, max_distance=max_distance, min_run=min_run
        ):
            link(i, j)
    video, start, end = (clips.column(c).to_pylist() for c in ("video_id", "start_frame", "end_frame"))
    order = sorted(range(clips.num_rows), key=lambda n: (video[n], start[n]))
    for i, j in pairwise(order):
        if video[i] == video[j] and end[i] == start[j] and _continues(prints[i], prints[j], max_distance):
            link(i, j)
    clip_ids = clips.column("clip_id").to_pylist()
    smallest: dict[int, str] = {}
    for n, clip_id in enumerate(clip_ids):
        root = _root(parent, n)
        smallest[root] = min(smallest.get(root, clip_id), clip_id)
    ids = ["ctx_" + hashlib.sha1(smallest[_root(parent, n)].encode()).hexdigest()[:16] for n in range(len(clip_ids))]
    return attach_contexts(clips, pa.table({"clip_id": clip_ids, "context_id": ids}))


def attach_contexts(clips: pa.Table, contexts: pa.Table | None) -> pa.Table:
    """``clips`` with its ``context_id`` column set from ``contexts`` (clip_id, context_id); null where absent."""
    known = {}
    if contexts is not None:
        pairs = zip(contexts.column("clip_id").to_pylist(), contexts.column("context_id").to_pylist(), strict=True)
        known = dict(pairs)
    values = pa.array([known.get(c) for c in clips.column("clip_id").to_pylist()], pa.string())
    return clips.set_column(clips.schema.get_field_index("context_id"), "context_id", values)


def context_pass(run: RunDir, clips: pa.Table, sample_fps: float) -> pa.Table:
    """Assign contexts to the run's stage ``clips``; stores (clip_id, video_id, context_id) in
    ``_stage/contexts`` for the reference pass and returns the clips with ``context_id`` filled."""
    clips = assign_contexts(clips, sample_fps=sample_fps)
    write_atomic(clips.select(_SCHEMA.names).cast(_SCHEMA), run.root / "_stage" / "contexts" / "contexts.parquet")
    return clips


def stored_contexts(run: RunDir) -> pa.Table | None:
    """The (clip_id, video_id, context_id) rows of the last :func:`context_pass`; None before one ran."""
    files = run.files("contexts", stage=True)
    return run.read("contexts", _SCHEMA, stage=True) if files else None
