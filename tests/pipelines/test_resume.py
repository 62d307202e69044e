"""Resuming a build (pipelines.resume): a ``kill -9`` in the middle of ``datakit build``, then the same command
again, gives the same ids and rows; a run made with other output settings is refused."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from datakit.config import BuildConfig
from datakit.faces import build_face_stack
from datakit.store import RunDir
from pipelines.resume import RunConflictError, check_resume
from tests.conftest import MODELS, VIDEOS, build_in_subprocess

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
    return [
        sys.executable,
        "-m",
        "datakit.cli",
        "build",
        "--src",
        str(src),
        "--out",
        str(out),
        "--models-dir",
        str(MODELS),
        "--workers",
        "1",
        "--quiet",
    ]


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
