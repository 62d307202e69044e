"""Track continuity: the tracker on synthetic box sequences, and one track per appearance on real footage."""

from __future__ import annotations

from collections import defaultdict

import pytest

from datakit.config import BuildConfig
from datakit.faces import build_face_stack
from datakit.video.discover import discover
from datakit.video.tracking import FaceTracker
from tests.conftest import MODELS, VIDEOS

STEP = 1.0 / 3.0  # the default sampling interval


def _box(cx: float, cy: float, size: float) -> tuple[float, float, float, float]:
    return (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)


def _tracker(**kw) -> FaceTracker:
    return FaceTracker(**{"start_score": 0.6, "step_s": STEP, "max_gap_s": 1.0, **kw})


# --- synthetic sequences ---


def test_a_face_moving_fast_stays_one_track():
    # 120 px face moving 110 px per sample (0.9 face sizes): no overlap-only tracker keeps this.
    tracker = _tracker()
    keys = [tracker.update(n * STEP, [_box(100 + 110 * n, 200, 120)], [0.9])[0] for n in range(6)]
    assert keys == [0] * 6


def test_constant_velocity_prediction_carries_a_track_over_a_gap():
    # 60 px per sample; two samples missed: the face reappears where the motion predicts it.
    tracker = _tracker(max_shift=0.6)
    assert tracker.update(0.0, [_box(100, 200, 100)], [0.9]) == [0]
    assert tracker.update(STEP, [_box(160, 200, 100)], [0.9]) == [0]
    tracker.update(2 * STEP, [], [])
    tracker.update(3 * STEP, [], [])
    assert tracker.update(4 * STEP, [_box(340, 200, 100)], [0.9]) == [0]  # 180 px from the last box


def test_a_gap_longer_than_max_gap_ends_the_track_and_a_cut_ends_all():
    tracker = _tracker()
    assert tracker.update(0.0, [_box(100, 100, 80)], [0.9]) == [0]
    assert tracker.update(1.2, [_box(100, 100, 80)], [0.9]) == [1]
    tracker.cut()
    assert tracker.update(1.5, [_box(100, 100, 80)], [0.9]) == [2]


def test_low_score_detections_extend_but_never_start():
    tracker = _tracker()
    # alone, a low-score detection is dropped: no track, no key
    assert tracker.update(0.0, [_box(400, 100, 80)], [0.4]) == [None]
    assert tracker.update(STEP, [_box(100, 100, 80)], [0.9]) == [0]
    # a weak detection of the tracked face continues it; a weak one elsewhere is dropped
    assert tracker.update(2 * STEP, [_box(120, 100, 70), _box(500, 300, 80)], [0.3, 0.45]) == [0, None]
    assert tracker.update(3 * STEP, [_box(140, 100, 80)], [0.8]) == [0]


def test_a_strong_detection_wins_over_a_weak_one_for_the_same_track():
    tracker = _tracker()
    tracker.update(0.0, [_box(100, 100, 80)], [0.9])
    # the weak one is closer, but strong detections are associated first (ByteTrack's order)
    keys = tracker.update(STEP, [_box(102, 100, 80), _box(150, 100, 80)], [0.5, 0.9])
    assert keys == [None, 0]


def test_two_people_crossing_stay_two_tracks():
    # A walks right, B walks left on the same line; they pass each other between samples 2 and 3.
    tracker = _tracker()
    a_keys, b_keys = [], []
    for n in range(6):
        a, b = _box(100 + 60 * n, 200, 90), _box(400 - 60 * n, 210, 90)
        keys = tracker.update(n * STEP, [a, b], [0.9, 0.9])
        a_keys.append(keys[0])
        b_keys.append(keys[1])
    assert len(set(a_keys)) == 1 and len(set(b_keys)) == 1 and a_keys[0] != b_keys[0]


def test_a_small_blob_next_to_a_large_face_does_not_continue_its_track():
    tracker = _tracker()
    assert tracker.update(0.0, [_box(300, 200, 180)], [0.9]) == [0]
    # the face is missed; a 60 px blob at 0.5 face sizes from it is not the same face
    assert tracker.update(STEP, [_box(340, 250, 60)], [0.9]) == [1]
    assert tracker.update(2 * STEP, [_box(330, 190, 175)], [0.9]) == [0]


def test_a_face_partly_out_of_frame_still_matches():
    frame = (640, 360)
    tracker = _tracker()
    assert tracker.update(0.0, [(480, 40, 620, 260)], [0.9], frame) == [0]
    # half out of the right edge: the visible box is small and shifted, the score low
    assert tracker.update(STEP, [(590, 20, 640, 150)], [0.3], frame) == [0]
    assert tracker.update(2 * STEP, [(500, 30, 630, 250)], [0.8], frame) == [0]


# --- real footage ---


@pytest.fixture(scope="module")
def stack():
    return build_face_stack("auto", models_dir=MODELS)


def _process(name: str, stack, **cfg):
    from datakit.video.job import process_video

    src = next(s for s in discover(VIDEOS) if s.rel_path == name)
    return process_video(src, stack, BuildConfig(src=VIDEOS, out="unused", **cfg))


def test_lacamoire_close_up_is_one_track_with_a_left_profile_view(stack):
    """Hamilton frames 20-81: one shot, Lacamoire in left profile, turning and cut by the right edge."""
    first = _process("hamilton_white_house.mp4", stack)
    faces = [f for f in first.tables["faces"].to_pylist() if 20 <= f["frame_index"] <= 81]
    profile_tracks = defaultdict(list)
    for f in faces:
        if f["yaw_deg"] is not None and f["yaw_deg"] > 60 and f["sharpness"] >= 7:
            profile_tracks[f["track_id"]].append(f["frame_index"])
    assert len(profile_tracks) == 1, dict(profile_tracks)
    [(track_id, frames)] = profile_tracks.items()
    assert min(frames) <= 22 and max(frames) >= 78
    track = next(t for t in first.tables["tracks"].to_pylist() if t["track_id"] == track_id)
    assert "left_profile" in track["views"]
    # no blurred non-face blob (sharpness < 7) rides on his track
    assert all(f["sharpness"] >= 7 for f in faces if f["track_id"] == track_id)
    # low-score faces only extend: every track starts with a face at the start threshold
    start = stack.detector.score_threshold
    first_of = {}
    for f in first.tables["faces"].to_pylist():
        first_of.setdefault(f["track_id"], f)
    assert all(f["det_score"] >= start for f in first_of.values())
    assert any(f["det_score"] < start for f in faces if f["track_id"] == track_id)  # the weak frames joined
    again = _process("hamilton_white_house.mp4", stack)
    for table in ("faces", "tracks"):
        for column in ("face_id", "track_id") if table == "faces" else ("track_id",):
            assert first.tables[table][column].to_pylist() == again.tables[table][column].to_pylist()


def test_cisco_two_people_are_still_two_tracks(stack):
    out = _process("cisco_two_people.mp4", stack)
    assert out.status == "ok" and out.tables["tracks"].num_rows == 2


def test_the_assignment_keeps_every_track_it_can_where_people_pass():
    """crowd_walk with the ArcFace pack, 1.08 s: the boy's track, predicted to keep moving right, is
    cheapest for the face of the man beside him; lowest-cost-first matching gave it that face, pushed the
    boy's face onto a passer-by's track and left the man's track empty. The optimal assignment continues
    all three (real boxes, centre and size)."""
    tracker = _tracker()
    boy = [_box(947, 676, 74), _box(962, 683, 81), _box(1018, 698, 77)]
    man = [_box(1105, 639, 59), _box(1116, 659, 58), _box(1124, 664, 58)]
    passer = _box(985, 823, 116)  # the crossing woman, first seen at 0.72 s
    for n in range(3):
        boxes = [boy[n], man[n]] + ([passer] if n == 2 else [])
        tracker.update(n * STEP, boxes, [0.9] * len(boxes))
    keys = tracker.update(3 * STEP, [_box(1012, 741, 82), _box(1096, 703, 71)], [0.9, 0.9])
    assert keys == [0, 1]


def test_a_marginal_pair_does_not_displace_a_face_from_its_own_track():
    """crowd_walk with YuNet, 1.44 s: a background man's two-sample-old track, extrapolated over a missed
    sample, could just reach the red-haired man's face (its predicted box grown from 41 to 62 px), and his
    own track could then take the box YuNet puts on his hair. Making as many pairs as possible did that;
    the red-haired man keeps his face, the hair box starts a track of its own."""
    tracker = _tracker()
    background = [_box(484, 629, 46), _box(493, 647, 41), _box(507, 668, 47)]
    red_haired = [_box(709, 599, 72), _box(758, 614, 74), _box(743, 642, 81), _box(677, 620, 82)]
    for n in range(4):
        boxes = [red_haired[n]] + ([background[n]] if n < 3 else [])
        tracker.update(n * STEP, boxes, [0.9] * len(boxes))
    keys = tracker.update(4 * STEP, [_box(663, 686, 83), _box(684, 615, 59)], [0.91, 0.7])
    assert keys == [0, 2]
