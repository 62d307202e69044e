"""Discovery by content, content ids, atomic run-directory writes."""

from __future__ import annotations

import re
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from datakit.store import NotARunError, RunDir, write_atomic
from datakit.video.discover import discover, sniff
from datakit.video.tracking import IouTracker, iou
from tests.conftest import STILLS, VIDEOS


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
    (tmp_path / "identities" / ".datakit-tmp-part-00001.parquet.0a1b2c3d").write_text("half")
    run.clean_temporaries()
    assert not list(tmp_path.glob(".*")) and not list((tmp_path / "identities").glob(".*"))


def test_iou_tracker_links_overlapping_boxes_and_cuts():
    tracker = IouTracker(min_iou=0.3, max_gap_s=1.0)
    a, b = (0, 0, 10, 10), (50, 50, 60, 60)
    assert tracker.update(0.0, [a, b]) == [0, 1]
    assert tracker.update(0.33, [(51, 50, 61, 60), (1, 0, 11, 10)]) == [1, 0]
    assert tracker.update(2.0, [a]) == [2]  # gap longer than max_gap_s: a new track
    tracker.cut()
    assert tracker.update(2.3, [a]) == [3]
    assert iou(a, a) == 1.0 and iou(a, b) == 0.0


def test_run_dir_open_refuses_a_folder_that_is_not_a_run(tmp_path):
    for folder in (tmp_path / "missing", tmp_path):  # no folder; a folder without run.json
        with pytest.raises(NotARunError, match="is not a datakit run") as caught:
            RunDir.open(folder)
        assert str(folder) in str(caught.value) and "datakit build" in str(caught.value)
        assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ValueError)
    (tmp_path / "run.json").write_text("{half a record")
    with pytest.raises(NotARunError, match=re.escape(str(tmp_path / "run.json"))):
        RunDir.open(tmp_path).record()  # the folder is a run, its record is garbage: the error names the file
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(NotARunError, match="JSON object"):
        RunDir.open(tmp_path).record()


def test_run_record_is_written_whole_and_updated_in_place(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.has_record()
    run.write_record({"state": "running", "config": {"sample_fps": 3.0}})
    assert RunDir.open(run.root).record() == {"state": "running", "config": {"sample_fps": 3.0}}
    updated = run.update_record(state="finished", captions={"captioned": 2})
    assert updated == run.record() == {"state": "finished", "config": {"sample_fps": 3.0}, "captions": {"captioned": 2}}
    assert [p.name for p in run.root.iterdir()] == ["run.json"]  # no temporaries left


def test_scan_reads_the_columns_a_table_has(tmp_path):
    run = RunDir(tmp_path)
    assert run.scan("clips") is None and run.dataset("clips") is None and run.count_rows("clips") == 0
    write_atomic(pa.table({"clip_id": ["a", "b"], "start_s": [0.0, 1.0]}), tmp_path / "clips" / "v1.parquet")
    write_atomic(pa.table({"clip_id": ["c"], "start_s": [2.0]}), tmp_path / "clips" / "v2.parquet")
    got = run.scan("clips", ["clip_id", "caption"], filter=pc.field("start_s") > 0.5)  # no caption column: left out
    assert got.column_names == ["clip_id"] and got["clip_id"].to_pylist() == ["b", "c"]
    assert run.count_rows("clips") == 3


def test_build_config_from_run_reads_run_json_through_run_dir(tmp_path):
    from datakit import BuildConfig

    with pytest.raises(NotARunError, match="datakit build"):
        BuildConfig.from_run(tmp_path)
    cfg = BuildConfig(src=VIDEOS, out=tmp_path / "elsewhere", sample_fps=2.0)
    RunDir(tmp_path).write_record({"config": {**cfg.to_dict(), "a_future_field": 1}})
    again = BuildConfig.from_run(tmp_path, filter_min_motion=0.01)
    assert again.sample_fps == 2.0 and again.out == tmp_path and again.filter_min_motion == 0.01
    assert again.view_bins == cfg.view_bins
