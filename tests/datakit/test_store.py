"""The run folder's safety (datakit.store): only datakit's own temporaries are cleaned, foreign folders
are refused, one writer at a time, markers record their files, readers see a torn run, run.json stays JSON."""

from __future__ import annotations

import json
import math
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datakit.store import (
    GLOBAL_RECORD,
    LOCK_NAME,
    ForeignFolderError,
    IncompleteRunError,
    NotARunError,
    RunDir,
    RunLockedError,
    write_json_atomic,
)
from datakit.tools.index import load_or_build

#: names a user may give their own files and folders; datakit's temporaries used to look like these
USER_ENTRIES = (".x.tmp", ".a.old/", ".b.new/", "._index.abc.tmp/", ".clips.deadbeef.old/", "notes/.y.tmp")


def _make(root, entries) -> None:
    for name in entries:
        path = root / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir()
            (path / "keep.txt").write_text("mine")
        else:
            path.write_text("mine")


def _video_tables(num_faces: int = 2) -> dict[str, pa.Table]:
    faces = pa.table({"face_id": [f"f{i}" for i in range(num_faces)]})
    one = pa.table({"x": [1]})
    return {"videos": one, "faces": faces, "errors": one, "clips": one, "tracks": one, "crops": one}


def _run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.write_record({"state": "running", "config": {}})
    return run


def test_clean_temporaries_removes_only_datakit_temporaries(tmp_path):
    run = _run(tmp_path)
    run.replace_table("clips", pa.table({"x": [1]}))
    _make(run.root, USER_ENTRIES)
    ours = [
        ".datakit-tmp-run.json.0a1b2c3d",
        "faces/.datakit-tmp-v_1.parquet.0a1b2c3d",
        "_stage/crops/.datakit-tmp-v_1.parquet.0a1b2c3d/",  # a folder under a temporary name: removed too
        ".datakit-new-_index.0a1b2c3d/",
        ".datakit-new-samples.0a1b2c3d/",
        ".datakit-old-notatable.0a1b2c3d/",  # ours, but not a table name: removed, never restored
    ]
    _make(run.root, ours)
    os.replace(run.root / "clips", run.root / ".datakit-old-clips.0a1b2c3d")  # killed between the two renames
    run.clean_temporaries()
    for name in USER_ENTRIES:
        assert (run.root / name.rstrip("/")).exists(), name
        if name.endswith("/"):
            assert (run.root / name / "keep.txt").read_text() == "mine"
    for name in ours:
        assert not (run.root / name.rstrip("/")).exists(), name
    assert not (run.root / "notatable").exists()
    assert run.read("clips")["x"].to_pylist() == [1]  # the old table is back
    RunDir.open(run.root)  # and whole


def test_a_failed_index_build_leaves_only_what_a_build_cleans(tmp_path):
    run = _run(tmp_path)
    (run.root / "._index.0a1b2c3d.tmp").mkdir()  # what a failed `datakit query` left before this change

    def failing(folder):
        (folder / "vectors.faiss").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        load_or_build(run.root / "_index", "key", failing)
    left = [p.name for p in run.root.iterdir() if p.name.startswith(".datakit-new-_index.")]
    assert len(left) == 1 and (run.root / left[0]).is_dir()
    run.clean_temporaries()  # no IsADirectoryError, and the old-style folder is the user's now
    assert not any(p.name.startswith(".datakit-new-") for p in run.root.iterdir())
    assert (run.root / "._index.0a1b2c3d.tmp").is_dir()


def test_out_with_foreign_files_is_refused_and_names_them(tmp_path):
    RunDir(tmp_path / "new").check_out_folder()  # not there yet: fine
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty").check_out_folder()
    started = tmp_path / "started"  # a build killed before it wrote run.json: only its lock and temporaries
    _make(started, [LOCK_NAME, ".datakit-tmp-run.json.0a1b2c3d"])
    RunDir(started).check_out_folder()
    foreign = tmp_path / "thesis"
    _make(foreign, [".x.tmp", ".a.old/", "chapter1.tex", "figures/", "z.txt"])
    with pytest.raises(ForeignFolderError, match="not a datakit run") as caught:
        RunDir(foreign).check_out_folder()
    assert "'.a.old/'" in str(caught.value) and "2 more" in str(caught.value) and str(foreign) in str(caught.value)
    (foreign / "run.json").write_text("{}")  # an earlier run with the user's files beside it: fine
    RunDir(foreign).check_out_folder()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock("build"):
        holder = json.loads((run.root / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "build"
        busy = rf"in use by datakit pid {os.getpid()} \(build, started .*wait"
        with pytest.raises(RunLockedError, match=busy), RunDir(run.root).lock("filter"):
            pass
    with run.lock("caption"):  # released with the first holder
        pass
    assert isinstance(RunLockedError("x"), OSError)  # the CLI prints it as one line


def test_markers_record_their_files_and_a_torn_one_is_void(tmp_path):
    run = _run(tmp_path)
    run.write_video("v_a", _video_tables(), {"video_id": "v_a"})
    run.write_video("v_b", _video_tables(), {"video_id": "v_b"})
    files = json.loads(run.marker("v_a").read_text())["files"]
    assert set(files) == {
        "videos/v_a.parquet",
        "faces/v_a.parquet",
        "errors/v_a.parquet",
        "_stage/clips/v_a.parquet",
        "_stage/tracks/v_a.parquet",
        "_stage/crops/v_a.parquet",
    }
    assert files["faces/v_a.parquet"] == (run.root / "faces" / "v_a.parquet").stat().st_size
    RunDir.open(run.root)
    faces = run.root / "faces" / "v_a.parquet"
    faces.write_bytes(faces.read_bytes()[:100])  # torn
    with pytest.raises(IncompleteRunError, match=r"faces/v_a\.parquet is torn \(100 bytes, recorded \d+\).*rerun"):
        RunDir.open(run.root)
    (run.root / "faces" / "v_b.parquet").unlink()
    with pytest.raises(IncompleteRunError, match=r"faces/v_a\.parquet is torn.*\(and 1 more\)"):
        RunDir.open(run.root)
    voided = run.void_torn_markers()
    assert [k for k, _ in voided] == ["v_a", "v_b"] and "faces/v_b.parquet is missing (recorded" in voided[1][1]
    assert run.done_ids() == set()
    RunDir.open(run.root)  # nothing is claimed done any more: the run is an interrupted one, not a torn one


def test_a_torn_segment_voids_its_video_and_old_markers_are_checked_for_existence(tmp_path):
    run = _run(tmp_path)
    tables = _video_tables()
    run.write_segment("v_long", 0, tables, {"error": None})
    run.write_segment("v_long", 1, tables, {"error": None})
    run.finish_split_video("v_long", tables["videos"], {"segments": 2})
    assert set(json.loads(run.marker("v_long").read_text())["files"]) == {"videos/v_long.parquet"}
    (run.root / "_stage" / "tracks" / "v_long.s0001.parquet").unlink()
    assert [k for k, _ in run.void_torn_markers()] == ["v_long.s0001"]
    assert run.done_ids() == set() and run.done_segments("v_long") == {0}
    # a marker written before markers recorded their files: its files must exist
    run.write_video("v_old", tables, {"video_id": "v_old"})
    write_json_atomic({"video_id": "v_old"}, run.marker("v_old"))
    RunDir.open(run.root)
    (run.root / "errors" / "v_old.parquet").unlink()
    with pytest.raises(IncompleteRunError, match=r"errors/v_old\.parquet is missing;"):
        RunDir.open(run.root)
    write_json_atomic({"files": {"../../etc/passwd": 1}}, run.marker("v_evil"))
    assert {k for k, _ in run.void_torn_markers()} == {"v_old", "v_evil"}


def test_global_tables_are_recorded_and_checked(tmp_path):
    run = _run(tmp_path)
    run.replace_table("samples", pa.table({"x": list(range(10))}))
    sizes = {"part-00000.parquet": (run.root / "samples/part-00000.parquet").stat().st_size}
    assert json.loads((run.root / "_done" / GLOBAL_RECORD).read_text()) == {"samples": {"files": sizes}}
    assert run.done_ids() == set()  # the record is no video
    RunDir.open(run.root)
    # a swap killed between its two renames: the record names the new parts and, until the swap ends, the old
    killed = {"samples": {"files": {"part-00000.parquet": 1}, "previous": sizes}}
    write_json_atomic(killed, run.root / "_done" / GLOBAL_RECORD)
    os.replace(run.root / "samples", run.root / ".datakit-old-samples.0a1b2c3d")
    with pytest.raises(IncompleteRunError, match=r"samples/part-00000\.parquet is missing \(recorded 1 bytes\)"):
        RunDir.open(run.root)
    run.clean_temporaries()  # the old table is back: the recorded previous one
    RunDir.open(run.root)
    (run.root / "samples" / "part-00000.parquet").unlink()
    with pytest.raises(IncompleteRunError, match=r"samples/part-00000\.parquet is missing"):
        RunDir.open(run.root)
    assert RunDir.open(run.root, verify=False).root == run.root
    pq.write_table(pa.table({"x": [1]}), run.root / "samples" / "mine.parquet")  # a table rewritten by hand ...
    run.record_table("samples")  # ... and accepted as it is
    RunDir.open(run.root)


def test_run_json_is_always_valid_json_and_garbage_is_named(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(ValueError, match=r"not written to .*run\.json.*NaN or infinite"):
        run.write_record({"config": {"sample_fps": math.nan}})
    assert not (tmp_path / "run.json").exists() and not list(tmp_path.iterdir())
    (tmp_path / "run.json").write_text("{garbage")
    with pytest.raises(NotARunError, match=re.escape(str(tmp_path / "run.json"))):
        RunDir.open(tmp_path)
