"""Global pass: one person's track pieces within one video become one group, before cross-video linking.

The per-video stage ends a track at every clip boundary, and the tracker drops a face it loses for longer
than ``track_max_gap_s`` (occlusion, blur, a turned head). Linking those pieces only by their mean embedding
at the embedder's strict cross-video operating point splits one person into many identities, and a piece
with one or two faces becomes an "identity" of its own. Three steps, all deterministic (fixed orders, ties
by track id) and independent of how the video was cut into work items:

1. **Length splits are not cuts** (:func:`length_splits`, :func:`split_chains`). A shot longer than
   ``max_clip_s`` is cut every ``max_clip_s`` by :class:`datakit.video.shots.ClipCutter`; consecutive
   clips of one video with one ``shot`` number are such pieces, and the frame loop restarts its tracker
   at each of them as at a cut (so that a work item may start there).
   Across such a boundary, a track piece whose last face and one whose first face are consecutive samples
   on either side of it (the pieces the split cut; at most 1.5 / sample_fps apart, as samples fall on
   whole frames: 0.36 s at 3 fps in 25 fps footage) are joined when the tracker's own gates for one step
   hold - face-centre shift from the last box to the first <= ``track_max_shift`` face sizes, size ratio
   <= ``track_max_scale`` - and their embedded faces (when both have some) are not clearly two people
   (set-to-set score >= the embedder's *veto*), and neither face is a second box on a head another track
   holds in that frame (:func:`datakit.passes.gates.second_boxes`: where the tracker restarts at the
   split, YuNet's box on the red-haired man's hair on crowd_walk was nearer his last face than his own
   face was). A piece that ended earlier, or starts later, was ended or started by the tracker, not by the
   split. No velocity: on crowd_walk a passer-by occluding the boy bent
   his box's last step towards the man beside him, and the predicted box then matched the wrong face.
   Pairs are taken greedily by shift (ties by track id), one-to-one; joined pieces form a *chain*. Only
   boxes and times are used, never the per-video tracker's state, so a length split joins the same
   whether it lies inside one work item or between two segments of a long video
   (:func:`datakit.video.segments.plan_segments`).
   **Fast movers** (:func:`fast_mover_links`). The tracker links one sampling step only within
   ``track_max_shift`` face sizes, and a track's first step has no velocity yet: someone crossing the
   frame faster than that per step (on crowd_walk a woman crossing at ~900 px/s, 3.0 face sizes per 0.36 s
   step) leaves one-face pieces. Two pieces of one shot (its length splits included) are joined when the
   last face of one and the first of the other are consecutive samples farther apart than the tracker's
   gate, with sizes within ``track_max_scale``, *and* the step continues at constant velocity: the earlier
   piece's previous face and the later piece's next face (those that exist) lie within
   ``FAST_MOVER_TOLERANCE`` (0.5) face sizes of where the constant velocity puts them; between two
   one-face pieces, a third one-face-step piece before or after them must. Three collinear, evenly
   spaced faces of one size are what a walking or running person leaves; a chance alignment of other
   boxes to half a face size is rare (the crossing woman's steps miss the constant-velocity prediction by
   0.06 and 0.27 face sizes). The appearance veto of the split joins applies too. Pairs are taken
   greedily by that error, one-to-one.
2. **Set-to-set consolidation** (:func:`consolidate_video`). Per video, chains are clustered by the
   similarity of *all* their embedded faces: the score of two chains is the mean cosine over all their
   face pairs (``consolidate_top_k`` > 0: over the k best pairs only). Measured on both stacks it
   separates same from different people better than the cosine of mean embeddings, the top-3 mean or
   the best pair (dlib: every same-person pair above every different one; the top-3 mean overlapped by
   0.002, the mean embedding by 0.008), because a chain whose faces scatter - blur, a box on hair, a
   tracker switch - scores lower against everyone. Agglomeration with average linkage over those scores
   (does not chain: a bridge chain does not pull two far groups together) stops below
   ``consolidate_cosine``, a per-embedder threshold calibrated on real tracks
   (``benchmarks/calibrate_embedders.py --track-sets``, numbers in BENCHMARKS.md). Cannot-link: two
   tracks of one clip that overlap in time were on screen together; no group ever holds such a pair.
   Cost: an ``m x m`` score matrix per video of ``m`` chains, ``O(m^2)`` per merge.
3. **Fragments** (:func:`fragment_chains`). A chain with fewer than ``fragment_min_faces`` faces (3: one
   second at the default 3 fps) is too little evidence for a person of its own: on crowd_walk these are
   the 1-face pieces of a woman crossing at ~900 px/s and boxes on a head for one sample. It stays in a
   group it was consolidated into; a group made of fragments only is dropped: its tracks get
   ``drop_reason = "fragment"``, no identity and no reference. A chain is *not* a fragment merely because
   the embedder could use none of its faces: the two people of cisco_two_people.mp4 (3 faces each, 50-67
   px, the whole 0.75 s video) and Lacamoire's profile close-up are people, not noise.

The groups then seed :func:`datakit.passes.identities.link_identities`, which links them across videos.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.passes.gates import second_boxes
from datakit.passes.identities import cannot_link_pairs, embeddings_to_numpy

__all__ = [
    "CONSOLIDATE_COSINE",
    "FRAGMENT",
    "Continuity",
    "consolidate",
    "consolidate_video",
    "continuity_chains",
    "fast_mover_links",
    "fragment_chains",
    "length_splits",
    "set_scores",
    "split_chains",
]

#: ``tracks.drop_reason`` of a fragment (set after the gates of :mod:`datakit.passes.gates`)
FRAGMENT = "fragment"

#: Per embedder (a part of its name): (merge, veto) on the set-to-set score (default: the mean cosine over
#: all face pairs of two chains). Calibrated with ``benchmarks/calibrate_embedders.py --track-sets`` on real
#: tracks of the shipped footage, the stills videos and crowd_walk (numbers in BENCHMARKS.md, "Track
#: consolidation"): *merge* sits above every pair of different people measured off screen together (labelled:
#: dlib <= 0.895, ArcFace int8 <= 0.165) and on screen together (dlib <= 0.912; ArcFace <= 0.208, and 0.362
#: for a tracker identity switch, which cannot-link keeps apart anyway), and below the same person's tracks
#: across videos (dlib >= 0.949; ArcFace: all but a profile at 0.101 >= 0.401); *veto* below every pair of
#: pieces of one appearance (dlib >= 0.915, ArcFace >= 0.205) and above the wrong joins a velocity-based
#: geometry made at an occlusion (ArcFace <= 0.081).
#: largest miss (face sizes) of a constant-velocity prediction that confirms a fast mover's step
FAST_MOVER_TOLERANCE = 0.5

CONSOLIDATE_COSINE: dict[str, tuple[float, float]] = {"dlib-resnet-v1": (0.93, 0.88), "arcface": (0.30, 0.12)}


def consolidate_cosine_for(embedder_name: str, same_person_cosine: float) -> tuple[float, float]:
    """(merge, veto) of an embedder; an unknown one merges at its own operating point and vetoes nothing."""
    for key, value in CONSOLIDATE_COSINE.items():
        if key in embedder_name:
            return value
    return same_person_cosine, -1.0


@dataclass(frozen=True, slots=True)
class Continuity:
    """The tracker's gates, reused to join pieces across a length split (see the module docstring)."""

    max_gap_s: float = 1.0
    max_shift: float = 1.5
    max_scale: float = 1.6
    sample_fps: float = 3.0


def length_splits(clips: pa.Table) -> dict[tuple[str, str], float]:
    """``(clip before, clip after) -> boundary time (s)`` for the boundaries made for length, not by a cut:
    consecutive clips of one video and one ``shot``."""
    t = clips.select(["clip_id", "video_id", "start_frame", "end_frame", "start_s", "shot"]).to_pylist()
    t.sort(key=lambda r: (r["video_id"], r["start_frame"]))
    return {
        (a["clip_id"], b["clip_id"]): b["start_s"]
        for a, b in itertools.pairwise(t)
        if a["video_id"] == b["video_id"] and a["shot"] == b["shot"] and a["end_frame"] == b["start_frame"]
    }


def _ends(faces: pa.Table) -> dict[str, tuple]:
    """Per track: (first t, first box, last t, last box, whether the first / the last face is a second box).
    ``faces`` has a ``second`` column (:func:`datakit.passes.gates.second_boxes` over all the faces)."""
    t = faces.select(["track_id", "t_s", "bbox", "second"])
    order = pc.sort_indices(t, [("track_id", "ascending"), ("t_s", "ascending")])
    t = t.take(order)
    ids = t.column("track_id").to_pylist()
    ts = t.column("t_s").to_numpy()
    second = t.column("second").to_numpy(zero_copy_only=False)
    box = np.asarray(t.column("bbox").combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float64)
    box = box.reshape(-1, 4)
    out: dict[str, tuple] = {}
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            out[ids[start]] = (ts[start], box[start], ts[i - 1], box[i - 1], bool(second[start]), bool(second[i - 1]))
            start = i
    return out


def _centre(b: np.ndarray) -> np.ndarray:
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])


def _size(b: np.ndarray) -> float:
    return float(np.sqrt(max(b[2] - b[0], 1e-6) * max(b[3] - b[1], 1e-6)))


def _join_cost(before: tuple, after: tuple, boundary_s: float, gates: Continuity) -> float | None:
    """Centre shift (face sizes) from ``before``'s last box to ``after``'s first; None when a gate fails.

    The two faces must be consecutive samples on either side of the boundary (``boundary_s``): the pieces
    the split cut. A piece that ended earlier, or one that starts later, was ended or started by the
    tracker (a face lost, a person entering), and a later face near the old position is often someone
    else (on crowd_walk a man stepping out from behind the boy, where the man beside him had been)."""
    step = 1.5 / gates.sample_fps  # one sampling step; the half step absorbs rounding to whole frames
    gap = after[0] - before[2]
    if not (before[2] < boundary_s <= after[0]) or gap > min(step, gates.max_gap_s + 1e-6):
        return None
    if before[5] or after[4]:  # a second box on someone's head (datakit.passes.gates) continues no one
        return None
    a, b = before[3], after[1]
    sa, sb = _size(a), _size(b)
    if max(sa, sb) / min(sa, sb) > gates.max_scale:
        return None
    cost = float(np.linalg.norm(_centre(b) - _centre(a))) / (0.5 * (sa + sb))
    return cost if cost <= gates.max_shift else None


def split_chains(
    tracks: pa.Table,
    faces: pa.Table,
    splits: dict[tuple[str, str], float],
    gates: Continuity,
    sets: list[np.ndarray] | None = None,
    veto_below: float = -np.inf,
    top_k: int = 0,
    shot_of_clip: dict[str, int] | None = None,
) -> list[int]:
    """A chain code per row of ``tracks``: track pieces joined across the length ``splits``.

    ``sets``: per row, its embedded faces; two pieces that both have some and score below ``veto_below``
    (set-to-set, :func:`set_scores`) are not joined whatever their positions: where a passer-by occludes a
    face at the boundary, the nearest box after it can be someone else's.
    ``shot_of_clip`` (:func:`shots_of_clips`): when given, fast movers' pieces are joined too
    (:func:`fast_mover_links`).
    """
    ids = tracks.column("track_id").to_pylist()
    parent = list(range(len(ids)))
    if splits:
        clip_of = tracks.column("clip_id").to_pylist()
        # second boxes among all the faces given, so that joins over gated tracks are those over all tracks
        marked = faces.append_column("second", pa.array(second_boxes(faces)))
        ends = _ends(marked.filter(pc.is_in(marked.column("track_id"), value_set=pa.array(ids, pa.string()))))
        by_clip: dict[str, list[int]] = {}
        for i, clip in enumerate(clip_of):
            if ids[i] in ends:
                by_clip.setdefault(clip, []).append(i)
        for (before, after), boundary_s in sorted(splits.items()):
            pairs = []
            for i in by_clip.get(before, ()):
                for j in by_clip.get(after, ()):
                    cost = _join_cost(ends[ids[i]], ends[ids[j]], boundary_s, gates)
                    if cost is not None and sets is not None and len(sets[i]) and len(sets[j]):
                        cost = cost if set_scores([sets[i], sets[j]], top_k)[0, 1] >= veto_below else None
                    if cost is not None:
                        pairs.append((cost, ids[i], ids[j], i, j))
            used_a: set[int] = set()
            used_b: set[int] = set()
            for _, _, _, i, j in sorted(pairs):
                if i not in used_a and j not in used_b:
                    used_a.add(i)
                    used_b.add(j)
                    parent[_root(parent, j)] = _root(parent, i)
    if shot_of_clip is not None:
        fast_mover_links(tracks, faces, shot_of_clip, gates, parent, sets, veto_below, top_k)
    return [_root(parent, i) for i in range(len(ids))]


def _points(faces: pa.Table) -> dict[str, np.ndarray]:
    """Per track: its faces in time order as rows ``(t, cx, cy, size)``."""
    t = faces.select(["track_id", "t_s", "bbox"])
    t = t.take(pc.sort_indices(t, [("track_id", "ascending"), ("t_s", "ascending")]))
    ids = t.column("track_id").to_pylist()
    box = np.asarray(t.column("bbox").combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float64)
    box = box.reshape(-1, 4)
    size = np.sqrt(np.maximum(box[:, 2] - box[:, 0], 1e-6) * np.maximum(box[:, 3] - box[:, 1], 1e-6))
    rows = np.stack([t.column("t_s").to_numpy(), (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2, size], 1)
    out: dict[str, np.ndarray] = {}
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            out[ids[start]] = rows[start:i]
            start = i
    return out


def _miss(p: np.ndarray, q: np.ndarray, r: np.ndarray, max_scale: float) -> float:
    """How far (in ``r``'s face sizes) ``r`` lies from where constant velocity from ``p`` to ``q`` puts it;
    infinite when the three sizes are not one face's."""
    sizes = (p[3], q[3], r[3])
    if max(sizes) / min(sizes) > max_scale:
        return np.inf
    predicted = q[1:3] + (q[1:3] - p[1:3]) * (r[0] - q[0]) / max(q[0] - p[0], 1e-9)
    return float(np.linalg.norm(r[1:3] - predicted)) / r[3]


def fast_mover_links(
    tracks: pa.Table,
    faces: pa.Table,
    shot_of_clip: dict[str, int],
    gates: Continuity,
    parent: list[int],
    sets: list[np.ndarray] | None = None,
    veto_below: float = -np.inf,
    top_k: int = 0,
) -> None:
    """Join the pieces a fast mover leaves (see the module docstring) into ``parent`` (union-find over the
    rows of ``tracks``). ``shot_of_clip``: clips joined by length splits share a shot number."""
    ids = tracks.column("track_id").to_pylist()
    clip_of = tracks.column("clip_id").to_pylist()
    pts = _points(faces.filter(pc.is_in(faces.column("track_id"), value_set=pa.array(ids, pa.string()))))
    step = 1.5 / gates.sample_fps  # one sampling step; the half step absorbs rounding to whole frames
    by_shot: dict[int, list[int]] = {}
    for i, clip in enumerate(clip_of):
        if ids[i] in pts:
            by_shot.setdefault(shot_of_clip.get(clip, -1 - i), []).append(i)
    links = []
    for members in by_shot.values():
        nxt: dict[int, list[int]] = {}  # piece -> pieces starting one fast step after it ends
        for i in members:
            last = pts[ids[i]][-1]
            for j in members:
                first = pts[ids[j]][0]
                if i == j or not 0 < first[0] - last[0] <= step:
                    continue
                if max(first[3], last[3]) / min(first[3], last[3]) > gates.max_scale:
                    continue
                if np.linalg.norm(first[1:3] - last[1:3]) / (0.5 * (first[3] + last[3])) > gates.max_shift:
                    nxt.setdefault(i, []).append(j)
        prv: dict[int, list[int]] = {}
        for i, js in nxt.items():
            for j in js:
                prv.setdefault(j, []).append(i)
        for i, js in sorted(nxt.items()):
            a = pts[ids[i]]
            for j in js:
                b = pts[ids[j]]
                # Each piece's own motion must agree (the earlier piece's previous face, the later piece's
                # next face); one-face pieces borrow it from a neighbouring one-step piece.
                own = []
                if len(a) > 1:
                    own.append(_miss(a[-2], a[-1], b[0], gates.max_scale))
                if len(b) > 1:
                    own.append(_miss(a[-1], b[0], b[1], gates.max_scale))
                if own:
                    miss = max(own)
                else:
                    borrowed = [_miss(a[-1], b[0], pts[ids[k]][0], gates.max_scale) for k in nxt.get(j, ())]
                    borrowed += [_miss(pts[ids[k]][-1], a[-1], b[0], gates.max_scale) for k in prv.get(i, ())]
                    miss = min(borrowed, default=np.inf)
                if miss > FAST_MOVER_TOLERANCE:
                    continue
                both_embedded = sets is not None and len(sets[i]) and len(sets[j])
                if both_embedded and set_scores([sets[i], sets[j]], top_k)[0, 1] < veto_below:
                    continue
                links.append((miss, ids[i], ids[j], i, j))
    used_a: set[int] = set()
    used_b: set[int] = set()
    for _, _, _, i, j in sorted(links):
        if i not in used_a and j not in used_b and _root(parent, i) != _root(parent, j):
            used_a.add(i)
            used_b.add(j)
            parent[_root(parent, j)] = _root(parent, i)


def shots_of_clips(clips: pa.Table) -> dict[str, int]:
    """A shot code per clip, unique across videos: clips split from one shot for length share one."""
    t = clips.select(["clip_id", "video_id", "shot"]).to_pylist() if clips.num_rows else []
    codes: dict[tuple[str, int], int] = {}
    return {r["clip_id"]: codes.setdefault((r["video_id"], r["shot"]), len(codes)) for r in t}


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def set_scores(sets: list[np.ndarray], top_k: int = 0) -> np.ndarray:
    """``(m, m)`` set-to-set scores: mean of the ``top_k`` highest face-to-face cosines of two sets of unit
    vectors (fewer when fewer pairs exist; ``top_k <= 0``: of all pairs); NaN where a set is empty, and on
    the diagonal."""
    m = len(sets)
    out = np.full((m, m), np.nan, np.float64)
    sizes = np.array([len(s) for s in sets])
    nonempty = np.flatnonzero(sizes > 0)
    if len(nonempty) < 2:
        return out
    faces = np.concatenate([sets[i] for i in nonempty]).astype(np.float32)
    bounds = np.concatenate([[0], np.cumsum(sizes[nonempty])])
    for a, i in enumerate(nonempty.tolist()):
        block = sets[i].astype(np.float32) @ faces[bounds[a + 1] :].T  # this set against the later ones
        for b in range(a + 1, len(nonempty)):
            sims = block[:, bounds[b] - bounds[a + 1] : bounds[b + 1] - bounds[a + 1]].ravel()
            k = sims.size if top_k <= 0 else min(top_k, sims.size)
            top = np.partition(sims, sims.size - k)[sims.size - k :]
            out[i, nonempty[b]] = out[nonempty[b], i] = float(top.mean())
    return out


def consolidate_video(scores: np.ndarray, forbid: np.ndarray, threshold: float) -> list[int]:
    """A group code per chain: average-linkage agglomeration of ``scores`` (NaN = no evidence), never
    joining two groups with a ``forbid`` (cannot-link) pair, stopping below ``threshold``.

    Each step merges the most similar pair of groups (ties: the lowest indices); the merged row is the
    size-weighted mean of the two rows, i.e. the mean score over all chain pairs across the groups. Pairs
    without a score count as absent evidence, not as 0: their weight is left out of the mean.
    """
    m = len(scores)
    group = list(range(m))
    if m < 2:
        return group
    have = ~np.isnan(scores)
    total = np.where(have, scores, 0.0)  # sum of scores over chain pairs across two groups
    count = have.astype(np.float64)  # number of scored chain pairs across two groups
    forbid = forbid.copy()
    alive = np.ones(m, bool)
    while True:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
        mean[forbid | ~alive[:, None] | ~alive[None, :]] = -np.inf
        np.fill_diagonal(mean, -np.inf)
        best = int(np.argmax(mean))
        i, j = divmod(best, m)
        if mean[i, j] < threshold:
            return [_root(group, c) for c in range(m)]
        i, j = min(i, j), max(i, j)
        total[i] += total[j]
        total[:, i] = total[i]
        count[i] += count[j]
        count[:, i] = count[i]
        forbid[i] |= forbid[j]
        forbid[:, i] = forbid[i]
        alive[j] = False
        group[j] = i


def fragment_chains(num_faces: np.ndarray, min_faces: int) -> np.ndarray:
    """Per chain, whether it is too little evidence for a person of its own (see the module docstring)."""
    return num_faces < min_faces


def _face_sets(track_ids: list[str], faces: pa.Table, dim: int) -> list[np.ndarray]:
    """Per track (in ``track_ids`` order), its embedded faces as unit rows (possibly none)."""
    emb, valid = embeddings_to_numpy(faces.column("embedding"), dim)
    owner = faces.column("track_id").to_pylist()
    rows: dict[str, list[int]] = {}
    for i in np.flatnonzero(valid).tolist():
        rows.setdefault(owner[i], []).append(i)
    return [emb[rows.get(t, [])] for t in track_ids]


def consolidate(
    tracks: pa.Table,
    faces: pa.Table,
    clips: pa.Table,
    dim: int,
    *,
    gates: Continuity,
    threshold: float,
    veto_below: float = -np.inf,
    top_k: int = 0,
    min_faces: int = 3,
    chains: dict[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``tracks``: a group code (equal codes = one person within a video) and whether the track
    is a fragment to drop. ``faces``: their faces with embeddings; ``clips``: the clips of their videos.
    ``chains``: step 1 already made (:func:`continuity_chains`, track id -> chain id), else it is made here."""
    n = tracks.num_rows
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    by_id = pc.sort_indices(tracks, [("track_id", "ascending")]).to_numpy()
    t = tracks.take(pa.array(by_id))  # track_id order: nothing depends on the input row order
    ids = t.column("track_id").to_pylist()
    sets_per_track = _face_sets(ids, faces, dim)
    if chains is None:
        shots = shots_of_clips(clips)
        chain = split_chains(t, faces, length_splits(clips), gates, sets_per_track, veto_below, top_k, shots)
    else:
        chain = [chains[i] for i in ids]
    heads, chain_of = np.unique(np.asarray(chain, object), return_inverse=True)
    m = len(heads)
    sets = [np.concatenate([sets_per_track[i] for i in np.flatnonzero(chain_of == c)]) for c in range(m)]
    nfaces = np.bincount(chain_of, t.column("num_faces").to_numpy().astype(np.float64), m)
    fragment = fragment_chains(nfaces, min_faces)

    forbid = np.zeros((m, m), bool)
    clip_codes = np.unique(np.asarray(t.column("clip_id").to_pylist(), object), return_inverse=True)[1]
    pairs = cannot_link_pairs(clip_codes, t.column("start_s").to_numpy(), t.column("end_s").to_numpy())
    for i, partners in pairs.items():
        for j in partners:
            forbid[chain_of[i], chain_of[j]] = True

    group = np.arange(m)
    video_of_chain = np.empty(m, object)
    video_of_chain[chain_of] = np.asarray(t.column("video_id").to_pylist(), object)
    embedded = np.array([len(x) > 0 for x in sets])
    for video in sorted(set(video_of_chain.tolist())):
        # Chains without an embedded face have no score to merge on: they stay as they are (and the
        # matrices stay as small as the embedded chains of one video).
        members = np.flatnonzero((video_of_chain == video) & embedded)
        scores = set_scores([sets[c] for c in members], top_k)
        local = consolidate_video(scores, forbid[np.ix_(members, members)], threshold)
        group[members] = members[local]
    # A group with no chain of enough evidence is fragments only: dropped.
    solid = np.zeros(m, bool)
    np.logical_or.at(solid, group, ~fragment)
    codes, frag = np.empty(n, np.int64), np.empty(n, bool)
    codes[by_id], frag[by_id] = group[chain_of], ~solid[group[chain_of]]
    return codes, frag


def consolidate_passed(
    tracks: pa.Table, faces: pa.Table, clips: pa.Table, cfg, embedder, chains: dict[str, str] | None = None
) -> tuple[pa.Table, np.ndarray]:
    """The build's step: :func:`consolidate` the tracks that passed the gates (``drop_reason`` null) with
    the settings of ``cfg`` (a BuildConfig) and ``embedder``'s calibrated threshold. Returns ``tracks``
    with ``drop_reason = "fragment"`` set on dropped fragments, and a group code per row (-1: dropped).
    ``chains``: the gates' :func:`continuity_chains` (whole chains pass, so they are the passed tracks')."""
    passed = np.asarray(pc.is_null(tracks.column("drop_reason")).to_numpy(zero_copy_only=False), bool)
    groups = np.full(tracks.num_rows, -1, np.int64)
    threshold, veto, gates = _settings(cfg, embedder)
    codes, fragment = consolidate(
        tracks.filter(pa.array(passed)),
        faces,
        clips,
        embedder.dim,
        gates=gates,
        threshold=float(threshold),
        veto_below=float(veto),
        top_k=cfg.consolidate_top_k,
        min_faces=cfg.fragment_min_faces,
        chains=chains,
    )
    rows = np.flatnonzero(passed)
    groups[rows] = np.where(fragment, -1, codes)
    reasons = np.asarray(tracks.column("drop_reason").to_pylist(), object)
    reasons[rows[fragment]] = FRAGMENT
    at = tracks.schema.get_field_index("drop_reason")
    return tracks.set_column(at, "drop_reason", pa.array(reasons.tolist(), pa.string())), groups


def _settings(cfg, embedder) -> tuple[float, float, Continuity]:
    """(merge threshold, veto, continuity gates) of a build: the config's, else the embedder's calibrated ones."""
    threshold, veto = consolidate_cosine_for(embedder.name, cfg.same_person_cosine or embedder.same_person_cosine)
    if cfg.consolidate_cosine is not None:
        threshold = cfg.consolidate_cosine
    gates = Continuity(cfg.track_max_gap_s, cfg.track_max_shift, cfg.track_max_scale, cfg.sample_fps)
    return float(threshold), float(veto), gates


def continuity_chains(tracks: pa.Table, faces: pa.Table, clips: pa.Table, cfg, embedder) -> dict[str, str]:
    """Per track id, the id of the first piece of its chain (pieces of one appearance joined across length
    splits and fast movers' steps, step 1 of the module docstring), over all tracks, before any gate.

    The track gates judge chains, not pieces (:func:`datakit.passes.gates.apply_gates`): a shot cut into
    clips for length, or into segments of a long video, is then gated as a whole, as in an unsplit run. A
    chain passes or fails whole, so step 1 over the passed tracks alone makes the same joins."""
    if tracks.num_rows == 0:
        return {}
    _, veto, gates = _settings(cfg, embedder)
    by_id = pc.sort_indices(tracks, [("track_id", "ascending")]).to_numpy()
    t = tracks.take(pa.array(by_id))
    ids = t.column("track_id").to_pylist()
    sets = _face_sets(ids, faces, embedder.dim)
    splits = length_splits(clips)
    chain = split_chains(t, faces, splits, gates, sets, veto, cfg.consolidate_top_k, shots_of_clips(clips))
    first: dict[int, str] = {}
    for i, c in enumerate(chain):
        first.setdefault(c, ids[i])
    return {ids[i]: first[c] for i, c in enumerate(chain)}
