"""Discovery by content, content ids, atomic run-directory writes."""

from __future__ import annotations

import shutil

import pyarrow as pa

from datakit.store import RunDir
from datakit.video.discover import discover, sniff
from datakit.video.tracking import IouTracker, iou
from tests.conftest import MODELS, STILLS, VIDEOS


def test_discovery_is_by_content_and_ids_are_content_hashes(tmp_path):
    shutil.copy(VIDEOS / "single_face.mp4", tmp_path / "a.mp4")
    (tmp_path / "nested").mkdir()
    shutil.copy(VIDEOS / "single_face.mp4", tmp_path / "nested" / "renamed.bin")  # video, odd name
    shutil.copy(STILLS / "obama.jpg", tmp_path / "photo.jpg")  # an image under its own name: skipped
    shutil.copy(STILLS / "obama.jpg", tmp_path / "photo.mov")  # an image under a video name: reported
    (tmp_path / "notes.txt").write_text("not a video")
    found = {f.rel_path: f for f in discover(tmp_path)}
    assert set(found) == {"a.mp4", "nested/renamed.bin", "photo.mov"}
    assert found["a.mp4"].video_id == found["nested/renamed.bin"].video_id  # same bytes, same id
    assert found["photo.mov"].kind == "image:jpeg"
    moved = tmp_path / "moved.mp4"
    shutil.move(tmp_path / "a.mp4", moved)
    assert {f.video_id for f in discover(tmp_path) if f.rel_path == "moved.mp4"} == {found["a.mp4"].video_id}


def test_sniff_known_signatures():
    assert sniff((VIDEOS / "face_then_noface_hevc.mov").read_bytes()[:512]) == "video"
    assert sniff((STILLS / "lin-manuel-miranda.png").read_bytes()[:512]) == "image:png"
    assert sniff(b"hello world, not a video at all") == "unknown"


def test_replace_table_is_whole_and_leaves_no_temporaries(tmp_path):
    run = RunDir(tmp_path)
    run.replace_table("identities", pa.table({"x": [1, 2]}))
    run.replace_table("identities", pa.table({"x": [3]}))
    assert run.read("identities")["x"].to_pylist() == [3]
    (tmp_path / ".faces.x.tmp").write_text("half")
    run.clean_temporaries()
    assert not list(tmp_path.glob(".*"))


def test_iou_tracker_links_overlapping_boxes_and_cuts():
    tracker = IouTracker(min_iou=0.3, max_gap_s=1.0)
    a, b = (0, 0, 10, 10), (50, 50, 60, 60)
    assert tracker.update(0.0, [a, b]) == [0, 1]
    assert tracker.update(0.33, [(51, 50, 61, 60), (1, 0, 11, 10)]) == [1, 0]
    assert tracker.update(2.0, [a]) == [2]  # gap longer than max_gap_s: a new track
    tracker.cut()
    assert tracker.update(2.3, [a]) == [3]
    assert iou(a, a) == 1.0 and iou(a, b) == 0.0


def test_resume_refuses_other_output_settings_and_overwrite_clears(tmp_path):
    import json

    import pytest

    from datakit import BuildConfig
    from datakit.faces import build_face_stack
    from pipelines.build import RunConflictError, _check_resume

    stack = build_face_stack("auto", models_dir=MODELS)
    run = RunDir(tmp_path / "run")
    first = BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS)
    run.root.mkdir()
    (run.root / "run.json").write_text(json.dumps({"face_stack": stack.describe(), "config": first.to_dict()}))
    (run.root / "faces").mkdir()
    _check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS, workers=1), run, stack)  # fine
    with pytest.raises(RunConflictError, match="sample_fps"):
        _check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS, sample_fps=1.0), run, stack)
    _check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS, overwrite=True), run, stack)
    assert not (run.root / "run.json").exists() and not (run.root / "faces").exists()


def test_resume_checks_detect_max_side_also_against_older_runs(tmp_path):
    import json

    import pytest

    from datakit import BuildConfig
    from datakit.faces import build_face_stack
    from pipelines.build import RunConflictError, _check_resume

    stack = build_face_stack("auto", models_dir=MODELS)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    config = BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS).to_dict()
    (run.root / "run.json").write_text(json.dumps({"face_stack": stack.describe(), "config": config}))
    with pytest.raises(RunConflictError, match="detect_max_side"):
        _check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS, detect_max_side=640), run, stack)
    del config["detect_max_side"]  # a run.json from before the field: it detected at full frame size
    (run.root / "run.json").write_text(json.dumps({"face_stack": stack.describe(), "config": config}))
    with pytest.raises(RunConflictError, match="detect_max_side"):
        _check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS), run, stack)
    _check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS, detect_max_side=0), run, stack)
