"""Within-video consolidation (issue 15): length splits told from cuts, pieces joined across them, set-to-set
average-linkage clustering with cannot-link, fragments. Fast tests on the functions; crowd_walk in
test_crowd_acceptance.py."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from datakit.passes.consolidate import (
    Continuity,
    consolidate_video,
    fragment_chains,
    length_splits,
    set_scores,
    shots_of_clips,
    split_chains,
)
from datakit.video.shots import Segment

FPS = 25.0


def clips_table(segments: list[Segment], video: str = "v") -> pa.Table:
    """A clips table (the columns the pass reads) of ``segments`` in order, ids as the per-video stage makes them."""
    return pa.table(
        {
            "clip_id": [f"{video}_c{i:04d}" for i in range(len(segments))],
            "video_id": [video] * len(segments),
            "start_frame": [s.start_frame for s in segments],
            "end_frame": [s.end_frame for s in segments],
            "start_s": [s.start_s for s in segments],
            "end_s": [s.end_s for s in segments],
            "shot": [s.shot for s in segments],
        }
    )


def shot(a: int, b: int, no: int = 0, piece: int = 0) -> list[Segment]:
    """Shot ``no`` over frames ``[a, b)``, cut every ``piece`` frames (0: not cut), as the clip cutter cuts it."""
    edges = [*range(a, b, piece or b - a), b]
    return [Segment(x, y, x / FPS, y / FPS, no) for x, y in itertools.pairwise(edges)]


def test_length_splits_are_told_from_cuts():
    # Shots: 0-105 (4.2 s, in 5 pieces at max 1.0 s), 105-120 (0.6 s), 120-390 (10.8 s, in 11 pieces).
    clips = shot(0, 105, 0, 25) + shot(105, 120, 1, 25) + shot(120, 390, 2, 25)
    splits = length_splits(clips_table(clips))
    ids = [f"v_c{i:04d}" for i in range(len(clips))]
    expected = {(ids[i], ids[i + 1]) for i in range(4)} | {(ids[i], ids[i + 1]) for i in range(6, 16)}
    assert set(splits) == expected  # the cuts at frames 105 and 120 are not splits
    assert splits[(ids[0], ids[1])] == pytest.approx(clips[1].start_s)


def test_no_split_when_shots_fit_and_row_order_does_not_matter():
    clips = shot(0, 100, 0) + shot(100, 180, 1) + shot(180, 260, 2)
    assert length_splits(clips_table(clips)) == {}
    table = clips_table(shot(0, 600, 0, 250))
    assert length_splits(table.take([2, 0, 1])) == length_splits(table)


def faces_table(rows: list[tuple], scores: list[float] | None = None) -> pa.Table:
    """Faces ``(track_id, t_s, (centre x, centre y, size))`` as the pass reads them (square boxes, one video
    at 25 fps); ``scores``: their detector scores (all 0.9 by default)."""
    return pa.table(
        {
            "track_id": [r[0] for r in rows],
            "video_id": ["v"] * len(rows),
            "frame_index": [round(r[1] * FPS) for r in rows],
            "t_s": [r[1] for r in rows],
            "bbox": pa.array(
                [[x - s / 2, y - s / 2, x + s / 2, y + s / 2] for _, _, (x, y, s) in rows], pa.list_(pa.float32(), 4)
            ),
            "det_score": scores or [0.9] * len(rows),
        }
    )


def tracks_table(track_ids: list[str]) -> pa.Table:
    return pa.table({"track_id": track_ids, "clip_id": [t.rsplit("_t", 1)[0] for t in track_ids]})


SPLIT = {("v_c0000", "v_c0001"): 0.84}
STEP = 0.36  # 3 fps on 25 fps frames


def test_pieces_cut_by_a_split_join_nearest_first_one_to_one():
    faces = faces_table(
        [
            ("v_c0000_t00", 0.36, (500, 500, 80)),
            ("v_c0000_t00", 0.72, (520, 500, 80)),  # walking right
            ("v_c0000_t01", 0.72, (600, 500, 80)),  # a neighbour one face size to the right
            ("v_c0001_t00", 1.08, (590, 500, 80)),
            ("v_c0001_t01", 1.08, (530, 500, 84)),
        ]
    )
    tracks = tracks_table(["v_c0000_t00", "v_c0000_t01", "v_c0001_t00", "v_c0001_t01"])
    chains = split_chains(tracks, faces, SPLIT, Continuity())
    assert chains == [0, 1, 1, 0]


def test_a_piece_that_ended_before_the_split_or_starts_late_is_not_joined():
    faces = faces_table(
        [
            ("v_c0000_t00", 0.36, (500, 500, 80)),  # lost by the tracker a step before the boundary
            ("v_c0001_t00", 1.08, (505, 500, 80)),
            ("v_c0000_t01", 0.72, (900, 500, 80)),
            ("v_c0001_t01", 1.44, (905, 500, 80)),  # enters a step after the first sample of the clip
        ]
    )
    tracks = tracks_table(["v_c0000_t00", "v_c0000_t01", "v_c0001_t00", "v_c0001_t01"])
    assert split_chains(tracks, faces, SPLIT, Continuity()) == [0, 1, 2, 3]


def test_gates_and_appearance_veto():
    faces = faces_table(
        [
            ("v_c0000_t00", 0.72, (500, 500, 80)),
            ("v_c0001_t00", 1.08, (500 + 1.6 * 80, 500, 80)),  # moved further than track_max_shift
            ("v_c0000_t01", 0.72, (900, 500, 60)),
            ("v_c0001_t01", 1.08, (900, 500, 100)),  # size changed by more than track_max_scale
        ]
    )
    tracks = tracks_table(["v_c0000_t00", "v_c0000_t01", "v_c0001_t00", "v_c0001_t01"])
    assert split_chains(tracks, faces, SPLIT, Continuity()) == [0, 1, 2, 3]
    near = faces_table([("v_c0000_t00", 0.72, (500, 500, 80)), ("v_c0001_t00", 1.08, (505, 500, 80))])
    pair = tracks_table(["v_c0000_t00", "v_c0001_t00"])
    e = np.eye(4, dtype=np.float32)
    assert split_chains(pair, near, SPLIT, Continuity(), [e[:1], e[:1]], veto_below=0.5) == [0, 0]
    assert split_chains(pair, near, SPLIT, Continuity(), [e[:1], e[1:2]], veto_below=0.5) == [0, 1]
    assert split_chains(pair, near, SPLIT, Continuity(), [e[:1], e[:0]], veto_below=0.5) == [0, 0]  # no evidence


#: the woman crossing crowd_walk at ~900 px/s (YuNet boxes: centre, size), one sample per 0.36 s
CROSSING = [(339, 779, 107), (659, 817, 108), (985, 824, 108), (1341, 830, 118)]


def test_a_fast_mover_s_one_face_pieces_join_at_constant_velocity():
    faces = faces_table([(f"v_c0000_t{k:02d}", k * STEP, xys) for k, xys in enumerate(CROSSING)])
    tracks = tracks_table([f"v_c0000_t{k:02d}" for k in range(4)])
    one_shot = {"v_c0000": 0}
    assert split_chains(tracks, faces, {}, Continuity(), shot_of_clip=one_shot) == [0, 0, 0, 0]
    assert split_chains(tracks, faces, {}, Continuity()) == [0, 1, 2, 3]  # without shots: no fast-mover joins
    # two steps alone are not evidence: any two faces farther apart than the tracker's gate would qualify
    pair = tracks_table(["v_c0000_t00", "v_c0000_t01"])
    assert split_chains(pair, faces, {}, Continuity(), shot_of_clip=one_shot) == [0, 1]


def test_fast_mover_joins_need_constant_velocity_and_one_shot():
    zigzag = [(339, 779, 107), (659, 817, 108), (400, 824, 108)]  # third face back where it came from
    faces = faces_table([(f"v_c0000_t{k:02d}", k * STEP, xys) for k, xys in enumerate(zigzag)])
    tracks = tracks_table([f"v_c0000_t{k:02d}" for k in range(3)])
    assert split_chains(tracks, faces, {}, Continuity(), shot_of_clip={"v_c0000": 0}) == [0, 1, 2]
    # the crossing cut by a length split (0.84 s) is still one shot; by a cut it is two
    rows = [(f"v_c000{int(k * STEP > 0.84)}_t{k:02d}", k * STEP, xys) for k, xys in enumerate(CROSSING)]
    faces = faces_table(rows)
    tracks = tracks_table([r[0] for r in rows])
    clips = clips_table(shot(0, 42, 0, 21))
    assert split_chains(tracks, faces, SPLIT, Continuity(), shot_of_clip=shots_of_clips(clips)) == [0] * 4
    two_shots = {"v_c0000": 0, "v_c0001": 1}
    assert split_chains(tracks, faces, {}, Continuity(), shot_of_clip=two_shots) == [0, 0, 0, 3]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_set_scores_top_k_and_missing_sets():
    a = unit(np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    b = unit(np.array([[1.0, 0.1, 0], [0, 0, 1.0]]))
    s = set_scores([a, b, np.zeros((0, 3), np.float32)], top_k=1)
    assert s[0, 1] == pytest.approx(float(a[0] @ b[0]))  # the one good view pair counts
    assert np.isnan(s[0, 2]) and np.isnan(s[1, 2]) and np.isnan(s[0, 0])
    mean_all = set_scores([a, b], top_k=4)[0, 1]
    assert mean_all == pytest.approx(float((a @ b.T).mean()))


def test_average_linkage_does_not_chain_and_keeps_cannot_link():
    # A ~ B ~ C along a path; A and C far apart: B joins one side, never both.
    nan = np.nan
    scores = np.array([[nan, 0.95, 0.80], [0.95, nan, 0.94], [0.80, 0.94, nan]])
    none = np.zeros((3, 3), bool)
    groups = consolidate_video(scores, none, 0.93)
    assert groups[0] == groups[1] != groups[2]
    forbid = none.copy()
    forbid[0, 1] = forbid[1, 0] = True  # on screen together
    groups = consolidate_video(scores, forbid, 0.93)
    assert groups[0] != groups[1] and groups[1] == groups[2]
    # Transitively forbidden: 0 and 2 may not meet once 2 has joined 1's group with 0 forbidden to 1.
    scores2 = np.array([[nan, 0.5, 0.99], [0.5, nan, 0.99], [0.99, 0.99, nan]])
    groups = consolidate_video(scores2, forbid, 0.93)
    assert len(set(groups)) == 2 and groups[0] != groups[1]


def test_unscored_pairs_are_no_evidence():
    nan = np.nan
    scores = np.array([[nan, 0.99, nan], [0.99, nan, 0.97], [nan, 0.97, nan]])
    groups = consolidate_video(scores, np.zeros((3, 3), bool), 0.93)
    assert len(set(groups)) == 1  # chain 0 and 2 share no scored pair; their groups' mean is over 2 pairs


def test_fragments_are_few_face_chains():
    assert fragment_chains(np.array([1, 2, 3, 12]), 3).tolist() == [True, True, False, False]
    assert not fragment_chains(np.array([1, 2]), 0).any()


def test_a_second_box_on_a_head_continues_no_one_across_a_split():
    """crowd_walk at max_clip_s 1.0, the red-haired man at the split at 2.0 s: the tracker restarts there and
    YuNet gives his hair a box (0.69) nearer his last face (frame 43) than his own face's box (0.90) is."""
    rows = [
        ("v_c0001_t02", 1.72, [602, 606, 683, 701], 0.88),
        ("v_c0002_t01", 2.0, [564, 641, 645, 736], 0.90),  # his face
        ("v_c0002_t02", 2.0, [595, 576, 659, 656], 0.69),  # on his hair
    ]
    faces = pa.table(
        {
            "track_id": [r[0] for r in rows],
            "video_id": ["v"] * 3,
            "frame_index": [43, 50, 50],
            "t_s": [r[1] for r in rows],
            "bbox": pa.array([r[2] for r in rows], pa.list_(pa.float32(), 4)),
            "det_score": [r[3] for r in rows],
        }
    )
    tracks = tracks_table([r[0] for r in rows])
    split = {("v_c0001", "v_c0002"): 2.0}
    assert split_chains(tracks, faces, split, Continuity()) == [0, 0, 2]
