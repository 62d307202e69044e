"""Resuming a build (pipelines.resume): a ``kill -9`` in the middle of ``datakit build``, then the same command
again, gives the same ids and rows; a run made with other output settings is refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datakit.config import BuildConfig
from datakit.faces import build_face_stack
from datakit.store import RunDir
from pipelines.resume import RunConflictError, check_resume, reconcile_source
from tests.conftest import MODELS, VIDEOS, build_args, build_in_subprocess, run_datakit

SUBSET = (
    "obama_weekly_address_1.mp4",
    "single_face.mp4",
    "face_then_noface_hevc.mov",
    "cisco_two_people.mp4",
    "zhling_720p.mp4",
    "carphone_qcif.mp4",
)
KEYS = {
    "videos": "video_id",
    "clips": "clip_id",
    "faces": "face_id",
    "tracks": "track_id",
    "identities": "identity_id",
    "reference_views": "face_id",
    "samples": "sample_id",
}


def _ids(run) -> dict[str, list[str]]:
    return {t: sorted(pq.read_table(run / t)[k].to_pylist()) for t, k in KEYS.items()}


def _command(src, out) -> list[str]:
    return [sys.executable, "-m", "datakit.cli", *build_args(src, out)]


@pytest.mark.slow
def test_kill_9_then_rerun_matches_an_uninterrupted_run(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SUBSET:
        os.symlink(VIDEOS / name, src / name)
    reference = tmp_path / "reference"
    build_in_subprocess(src=src, out=reference, models_dir=MODELS, workers=2)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(src, killed), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list((killed / "_done").glob("*.json"))) < 2:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    done_at_kill = len(list((killed / "_done").glob("*.json")))
    assert 2 <= done_at_kill < len(SUBSET), "kill landed outside the per-video stage"
    assert not (killed / "samples").exists() or not any((killed / "samples").iterdir())

    rerun = subprocess.run(_command(src, killed), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    resumed = re.search(r"(\d+) already done", rerun.stdout)
    assert resumed and int(resumed.group(1)) >= done_at_kill, rerun.stdout  # finished videos were not redone
    got, want = _ids(killed), _ids(reference)
    for table in KEYS:
        assert got[table] == want[table], table
    faces = pq.read_table(killed / "faces")
    assert len(set(faces["face_id"].to_pylist())) == faces.num_rows  # nothing duplicated


def _earlier_run(root, config: dict, stack) -> RunDir:
    """A run folder whose run.json says it was built with ``config``."""
    run = RunDir(root)
    run.root.mkdir()
    (run.root / "run.json").write_text(json.dumps({"face_stack": stack.describe(), "config": config}))
    return run


def test_resume_refuses_other_output_settings_and_overwrite_clears(tmp_path):
    stack = build_face_stack("auto", models_dir=MODELS)
    first = BuildConfig(src=VIDEOS, out=tmp_path / "run", models_dir=MODELS)
    run = _earlier_run(tmp_path / "run", first.to_dict(), stack)
    (run.root / "faces").mkdir()
    check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS, workers=1), run, stack)  # fine
    check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS, gate_min_face_px=80.0), run, stack)
    with pytest.raises(RunConflictError, match="sample_fps"):
        check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS, sample_fps=1.0), run, stack)
    check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS, overwrite=True), run, stack)
    assert not (run.root / "run.json").exists() and not (run.root / "faces").exists()


def test_resume_checks_detect_max_side_also_against_older_runs(tmp_path):
    stack = build_face_stack("auto", models_dir=MODELS)
    config = BuildConfig(src=VIDEOS, out=tmp_path / "run", models_dir=MODELS).to_dict()
    run = _earlier_run(tmp_path / "run", config, stack)
    with pytest.raises(RunConflictError, match="detect_max_side"):
        check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS, detect_max_side=640), run, stack)
    del config["detect_max_side"]  # a run.json from before the field: it detected at full frame size
    (run.root / "run.json").write_text(json.dumps({"face_stack": stack.describe(), "config": config}))
    with pytest.raises(RunConflictError, match="detect_max_side"):
        check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS), run, stack)
    check_resume(BuildConfig(src=VIDEOS, out=run.root, models_dir=MODELS, detect_max_side=0), run, stack)


def test_resume_refuses_another_source(tmp_path):
    stack = build_face_stack("auto", models_dir=MODELS)
    first = BuildConfig(src=VIDEOS, out=tmp_path / "run", models_dir=MODELS)
    run = _earlier_run(tmp_path / "run", first.to_dict(), stack)
    check_resume(BuildConfig(src=VIDEOS / ".." / "videos", out=run.root, models_dir=MODELS), run, stack)  # same
    other = BuildConfig(src=tmp_path, out=run.root, models_dir=MODELS)
    with pytest.raises(
        RunConflictError,
        match=f"built from --src {VIDEOS.resolve()}, this build reads {tmp_path.resolve()}.*--reconcile-src",
    ):
        check_resume(other, run, stack)
    check_resume(other, run, stack, reconcile_src=True)


def test_reconcile_source_removes_only_the_files_of_the_videos_that_are_gone(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_record({"config": {}})
    one = pa.table({"x": [1]})
    tables = dict.fromkeys(("videos", "faces", "errors", "clips", "tracks", "crops"), one)
    run.write_video("v_a", tables, {})
    run.write_video("v_b", tables, {})
    run.write_segment("v_c", 0, tables, {})
    (run.root / "_plan").mkdir()
    (run.root / "_plan" / "v_c.json").write_text("{}")
    pq.write_table(one, run.root / "errors" / "caption-v_b_c0001.parquet")
    pq.write_table(one, run.root / "errors" / "caption-v_a_c0001.parquet")
    assert reconcile_source(run, {"v_a"}) == ["v_b", "v_c"]
    left = sorted(str(p.relative_to(run.root)) for p in run.root.rglob("*") if p.is_file())
    assert not [name for name in left if "v_b" in name or "v_c" in name], left
    assert "errors/caption-v_a_c0001.parquet" in left and run.done_ids() == {"v_a"}
    RunDir.open(run.root)


TWO = ("single_face.mp4", "cisco_two_people.mp4")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple:
    """A finished build of two shipped videos: (source folder, run folder); tests work on copies of the run."""
    root = tmp_path_factory.mktemp("small")
    src = root / "src"
    src.mkdir()
    for name in TWO:
        os.symlink(VIDEOS / name, src / name)
    build_in_subprocess(src=src, out=root / "run", models_dir=MODELS, workers=1)
    return src, root / "run"


def _copy_run(small_run, tmp_path):
    src, run = small_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    return src, copy


def _video_id(run, name: str) -> str:
    videos = pq.read_table(run / "videos").to_pylist()
    return next(v["video_id"] for v in videos if v["path"] == name)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_missing_or_torn_file_is_named_by_the_readers_and_redone_on_resume(small_run, tmp_path, damage):
    src, run = _copy_run(small_run, tmp_path)
    before = _ids(run)
    video_id = _video_id(run, "single_face.mp4")
    faces = run / "faces" / f"{video_id}.parquet"
    want = pq.read_table(faces)
    if damage == "delete":
        faces.unlink()
    else:
        faces.write_bytes(faces.read_bytes()[: faces.stat().st_size // 2])
    problem = f"faces/{video_id}.parquet is {'missing' if damage == 'delete' else 'torn'}"
    for command in (
        ["query", "-m", str(run), "--identity", "anything"],
        ["report", "-m", str(run), "--out", str(tmp_path / "report")],
        ["split", "-m", str(run), "--eval-fraction", "0.5"],
    ):
        proc = run_datakit(*command)
        assert proc.returncode == 1 and f"run {run} is incomplete: {problem}" in proc.stderr, (command, proc.stderr)
        assert "rerun `datakit build" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "report").exists() and not (run / "splits").exists()

    rerun = run_datakit(*build_args(src, run), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "1 videos redone: files missing or torn" in rerun.stdout and problem in rerun.stdout
    assert "1 already done" in rerun.stdout  # the other video was not redone
    assert pq.read_table(faces).equals(want)
    assert _ids(run) == before
    RunDir.open(run)  # whole again


@pytest.mark.slow
def test_resume_with_another_src_is_refused_and_reconcile_src_removes_the_missing_videos(small_run, tmp_path):
    src, run = _copy_run(small_run, tmp_path)
    gone = _video_id(run, "cisco_two_people.mp4")
    kept = _video_id(run, "single_face.mp4")
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    os.symlink(VIDEOS / "single_face.mp4", fewer / "single_face.mp4")
    refused = run_datakit(*build_args(fewer, run))
    assert refused.returncode == 1
    assert f"built from --src {src.resolve()}, this build reads {fewer.resolve()}" in refused.stderr, refused.stderr
    assert (run / "faces" / f"{gone}.parquet").exists() and json.loads((run / "run.json").read_text())["config"][
        "src"
    ] == str(src)

    proc = run_datakit(*build_args(fewer, run), "--reconcile-src", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 videos removed from the run: no longer in --src" in proc.stdout
    assert pq.read_table(run / "videos")["video_id"].to_pylist() == [kept]
    assert set(pq.read_table(run / "tracks")["video_id"].to_pylist()) == {kept}
    leftovers = [p for p in run.rglob(f"{gone}*") if p.is_file()]
    assert leftovers == [], leftovers
    record = json.loads((run / "run.json").read_text())
    assert record["src_resolved"] == str(fewer.resolve()) and record["summary"]["num_removed_videos"] == 1
    RunDir.open(run)
