"""Track gates: non-faces never become people, and every reference crop is a face another detector finds."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from PIL import Image

from datakit.config import BuildConfig
from datakit.faces.yunet import YuNetDetector
from datakit.passes.consolidate import FRAGMENT
from datakit.passes.gates import DROP_REASONS, GateThresholds, apply_gates, landmarks_plausible, second_boxes
from tests.conftest import MODELS, STILLS, build_in_subprocess


def _table(run, name, columns=None):
    return ds.dataset(run / name).to_table(columns=columns)


def test_landmark_layout_of_a_real_face_is_plausible_and_broken_layouts_are_not(models_dir):
    from datakit.faces import build_face_stack

    stack = build_face_stack("yunet", models_dir=models_dir)
    (face,) = stack.detector.detect(cv2.imread(str(STILLS / "obama.jpg")))
    bbox = np.array([face.bbox], np.float64)
    real = face.landmarks.reshape(1, 10).astype(np.float64)
    upside_down = face.landmarks[[3, 4, 2, 0, 1]].reshape(1, 10)  # mouth above the eyes
    far_away = real + np.array([[1000.0, 0.0] * 5])  # points outside the box
    collapsed = np.repeat(face.landmarks.mean(axis=0, keepdims=True), 5, axis=0).reshape(1, 10)
    no_landmarks = np.full((1, 10), np.nan)
    layouts = np.vstack([real, upside_down, far_away, collapsed, no_landmarks])
    got = landmarks_plausible(np.repeat(bbox, 5, axis=0), layouts)
    assert got.tolist() == [True, False, False, False, True]


def test_hamilton_non_faces_are_dropped_with_a_reason_and_never_linked(shipped_run, shipped_build):
    tracks = _table(shipped_run, "tracks").to_pylist()
    faces = _table(shipped_run, "faces", ["track_id", "sharpness", "face_px"]).to_pandas()
    sharp = faces.groupby("track_id").sharpness.median()
    for t in tracks:
        assert t["drop_reason"] in (None, *DROP_REASONS, FRAGMENT)  # fragments: after the gates
        assert (t["identity_id"] is None) == (t["drop_reason"] is not None), t["track_id"]
        if sharp[t["track_id"]] < 10:  # the dark audience blobs and the logo measure 1-6
            assert t["drop_reason"] is not None, t["track_id"]
    dropped = [t for t in tracks if t["drop_reason"]]
    assert dropped, "the Hamilton clip's dark blobs must be dropped"
    # the summary counts them by reason, and no reference or sample uses a dropped track
    summary = shipped_build[1]
    assert sum(summary["tracks_dropped"].values()) == len(dropped)
    dropped_ids = {t["track_id"] for t in dropped}
    assert not dropped_ids & set(_table(shipped_run, "reference_views", ["track_id"])["track_id"].to_pylist())
    for s in _table(shipped_run, "samples", ["identities"]).to_pylist():
        for person in s["identities"]:
            assert not dropped_ids & set(person["track_ids"])


def test_gates_use_the_stored_evidence_only(shipped_run):
    """Re-gating a finished run's tables gives its drop reasons back (no model is needed); a fragment passed
    the gates (it is dropped after them, by the consolidation)."""
    tracks, faces = _table(shipped_run, "tracks"), _table(shipped_run, "faces")
    defaults = GateThresholds.resolve(BuildConfig(src=".", out="."), YuNetDetector)  # the run's settings
    regated = apply_gates(tracks, faces, defaults)
    stored = [None if r == FRAGMENT else r for r in tracks.column("drop_reason").to_pylist()]
    assert regated.column("drop_reason").to_pylist() == stored
    everything = apply_gates(tracks, faces, GateThresholds(0.0, 0.0, 1e9, 0.0))
    assert set(everything.column("drop_reason").to_pylist()) == {"blurry"}


@pytest.fixture(scope="module")
def scrfd():
    """insightface's SCRFD-500M, an independent detector (not in the default stack)."""
    pytest.importorskip("insightface")
    import onnxruntime as ort
    from insightface.app import FaceAnalysis

    pack = MODELS / "insightface_det_500m"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    app = FaceAnalysis(
        name=str(pack), root=str(pack.parent), allowed_modules=["detection"], providers=["CPUExecutionProvider"]
    )
    app.prepare(ctx_id=-1, det_thresh=0.4, det_size=(320, 320))
    return app


def test_every_reference_crop_contains_a_face_an_independent_detector_finds(shipped_run, scrfd):
    refs = _table(shipped_run, "reference_views", ["face_id", "crop"]).to_pylist()
    assert refs
    missed = []
    for ref in refs:
        crop = np.asarray(Image.open(io.BytesIO(ref["crop"])).convert("RGB"))[:, :, ::-1]
        h, w = crop.shape[:2]
        # SCRFD misses faces that fill a tight crop (models README): pad with a neutral border first.
        pad = np.full((h * 2, w * 2, 3), 127, np.uint8)
        pad[h // 2 : h // 2 + h, w // 2 : w // 2 + w] = crop
        if not scrfd.get(pad):
            missed.append(ref["face_id"])
    assert not missed, f"{len(missed)} of {len(refs)} reference crops have no face for SCRFD: {missed}"


def test_changing_a_gate_on_resume_reruns_only_the_global_pass(tmp_path, videos_dir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "cisco.mp4").symlink_to(videos_dir / "cisco_two_people.mp4")
    out = tmp_path / "run"
    first = build_in_subprocess(src=src, out=out, models_dir=MODELS, workers=1)
    assert first["num_identities"] == 2 and not first["tracks_dropped"]
    again = build_in_subprocess(src=src, out=out, models_dir=MODELS, workers=1, gate_min_sharpness=1e6)
    assert again["resumed_videos"] == 1  # no video was processed again
    assert again["tracks_dropped"] == {"blurry": 2} and again["num_identities"] == 0
    assert again["num_samples"] == 0


def test_lacamoire_close_up_is_one_identity_with_left_profile_views(shipped_run):
    """Hamilton frames 20-81: one person in profile, head moving, partly cut by the frame edge."""
    hamilton = ds.dataset(shipped_run / "videos").to_table(filter=ds.field("path") == "hamilton_white_house.mp4")
    video_id = hamilton["video_id"][0].as_py()
    faces = _table(shipped_run, "faces", ["video_id", "track_id", "frame_index", "yaw_deg", "sharpness"]).to_pylist()
    profile_tracks = {
        f["track_id"]
        for f in faces
        if f["video_id"] == video_id and 20 <= f["frame_index"] <= 81 and f["yaw_deg"] > 60 and f["sharpness"] > 50
    }
    tracks = {t["track_id"]: t for t in _table(shipped_run, "tracks").to_pylist()}
    people = {tracks[t]["identity_id"] for t in profile_tracks}
    assert len(people) == 1 and None not in people, people
    (person,) = people
    identity = ds.dataset(shipped_run / "identities").to_table(filter=ds.field("identity_id") == person).to_pylist()
    assert "left_profile" in identity[0]["views"]
    refs = _table(shipped_run, "reference_views", ["identity_id", "view"]).to_pylist()
    assert any(r["identity_id"] == person and r["view"] == "left_profile" for r in refs)


def _faces_at(rows: list[tuple[str, int, tuple[float, float, float], float]]) -> pa.Table:
    """Faces ``(track_id, frame_index, (centre x, centre y, size), det_score)`` of one video, square boxes."""
    return pa.table(
        {
            "video_id": ["v"] * len(rows),
            "track_id": [r[0] for r in rows],
            "frame_index": [r[1] for r in rows],
            "bbox": pa.array(
                [[x - s / 2, y - s / 2, x + s / 2, y + s / 2] for _, _, (x, y, s), _ in rows],
                pa.list_(pa.float32(), 4),
            ),
            "det_score": [r[3] for r in rows],
        }
    )


def test_a_second_box_on_a_head_is_told_from_a_face_above_it():
    """crowd_walk, YuNet (centre, size, score read from a build): a box on the red-haired man's hair above
    his face box, and the white-haired woman's face just above the crossing woman's head (a real face)."""
    faces = _faces_at(
        [
            ("man", 45, (633, 658, 90), 0.89),
            ("hair", 45, (656, 591, 78), 0.53),  # 67 px above his face centre, on his hair
            ("man", 72, (555, 660, 99), 0.87),
            ("hair", 72, (585, 581, 91), 0.69),
            ("crossing", 0, (339, 779, 107), 0.91),
            ("white-haired", 0, (315, 662, 75), 0.83),  # 117 px above: her own face, behind
            ("other video", 45, (656, 591, 78), 0.40),  # another video's frame 45: not on the man's head
        ]
    )
    faces = faces.set_column(0, "video_id", pa.array(["v"] * 6 + ["w"]))
    assert second_boxes(faces).tolist() == [False, True, False, True, False, False, False]


def test_second_box_gate_drops_the_hair_track_only():
    faces = _faces_at([("man", n, (600 + n, 660, 90), 0.9) for n in range(4)])
    faces = pa.concat_tables([faces, _faces_at([("hair", n, (615 + n, 590, 80), 0.6) for n in range(4)])])
    faces = faces.append_column("face_px", pa.array([90.0] * 4 + [80.0] * 4, pa.float32()))
    faces = faces.append_column("sharpness", pa.array([100.0] * 8, pa.float32()))
    faces = faces.append_column("landmarks", pa.nulls(8, pa.list_(pa.float32(), 10)))
    tracks = pa.table({"track_id": ["hair", "man"]})
    gated = apply_gates(tracks, faces, GateThresholds(0.5, 40.0, 10.0, 0.0))
    assert gated.column("drop_reason").to_pylist() == ["second_box", None]


def test_gates_judge_a_chain_of_pieces_as_one_appearance():
    """A shot cut for length leaves pieces of one appearance; pooled, their evidence is the unsplit track's:
    a 38 px piece of a 45 px face is not `small` on its own when it continues that face."""
    rows = [("a", n, (600 + 5 * n, 660, 45), 0.9) for n in range(3)] + [("b", 3, (615, 660, 38), 0.9)]
    faces = _faces_at(rows)
    faces = faces.append_column("face_px", pa.array([45.0, 45.0, 45.0, 38.0], pa.float32()))
    faces = faces.append_column("sharpness", pa.array([100.0] * 4, pa.float32()))
    faces = faces.append_column("landmarks", pa.nulls(4, pa.list_(pa.float32(), 10)))
    tracks = pa.table({"track_id": ["a", "b"]})
    thresholds = GateThresholds(0.5, 40.0, 10.0, 0.0)
    assert apply_gates(tracks, faces, thresholds).column("drop_reason").to_pylist() == [None, "small"]
    pooled = apply_gates(tracks, faces, thresholds, {"a": "a", "b": "a"})
    assert pooled.column("drop_reason").to_pylist() == [None, None]
