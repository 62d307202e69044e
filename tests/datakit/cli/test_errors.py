"""One line and a documented exit status for what a user can get wrong: a bad setting exits 2 before any
work, an OS error (read-only, not a folder, full disk, garbage run.json) exits 1 naming the path. Real
``datakit`` processes (``run_datakit``); the footage is the shipped one."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODELS, VIDEOS, run_datakit


def _error_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The one error line of a failed command (asserting its exit status and that no traceback came)."""
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("datakit build: error: "), result.stderr[-3000:]
    return line


@contextlib.contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at ``where`` (root only: a read-only or full file system that root cannot write either)."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize(
    ("flags", "config", "says"),
    [
        (["--fps", "nan"], None, "config field sample_fps: must be a finite number > 0 (got nan)"),
        ([], '{"max_clip_s": "ten"}', "config field max_clip_s: must be a finite number > 0 (got 'ten')"),
        ([], '{"min_shot_s": null}', "config field min_shot_s: must be a finite number >= 0 (got null)"),
        (
            [],
            '{"view_bins": {"frontal_max_deg": 70, "profile_min_deg": 30}}',
            "config field view_bins: edges must increase: frontal_max_deg < profile_min_deg (got 70 and 30)",
        ),
        ([], '{"view_bins": {"frontal_max_deg": ' * 50_000 + "1" + "}" * 100_000, "nested too deeply"),
    ],
    ids=["nan-flag", "wrong-type", "null", "inverted-bins", "deep-nesting"],
)  # fmt: skip
def test_a_bad_setting_exits_2_naming_the_field_before_any_work(tmp_path, flags, config, says):
    out = tmp_path / "out"
    if config is not None:
        (tmp_path / "c.json").write_text(config)
        flags = [*flags, "--config", str(tmp_path / "c.json")]
    result = run_datakit("build", "--src", str(VIDEOS), "--out", str(out), *flags)
    line = _error_line(result, 2)
    assert says in line and len(result.stderr.strip().splitlines()) == 1
    if config is not None:
        assert str(tmp_path / "c.json") in line  # the file the value came from
    assert not out.exists()  # nothing started: no run folder


def test_out_below_a_file_is_one_line_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "run"
    line = _error_line(run_datakit("build", "--src", str(VIDEOS), "--out", str(out)), 1)
    assert "Not a directory" in line and str(tmp_path / "file") in line


def test_read_only_out_is_one_line_naming_the_path_and_nothing_is_written(tmp_path):
    if os.geteuid() != 0:
        out = tmp_path / "ro"
        out.mkdir(mode=0o555)
        context = contextlib.nullcontext(out)
    else:  # root writes into a 0o555 folder: a read-only file system refuses root too
        context = _tmpfs(tmp_path / "ro", "ro,size=64k")
    with context as out:
        line = _error_line(run_datakit("build", "--src", str(VIDEOS), "--out", str(out)), 1)
        assert ("Read-only file system" in line or "Permission denied" in line) and str(out) in line
        assert not list(out.iterdir())


def test_garbage_run_json_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"state": "finished", "conf')
    line = _error_line(run_datakit("build", "--src", str(VIDEOS), "--out", str(tmp_path / "run")), 1)
    assert str(tmp_path / "run" / "run.json") in line


@pytest.mark.slow
def test_a_full_disk_during_the_video_stage_is_one_line_and_nothing_half_written(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("single_face.mp4", "cisco_two_people.mp4"):
        (src / name).symlink_to(VIDEOS / name)
    with _tmpfs(tmp_path / "full", "size=48k") as disk:
        result = run_datakit(
            "build", "--src", str(src), "--out", str(disk / "run"), "--models-dir", str(MODELS), "--workers", "1",
            "--quiet",
        )  # fmt: skip
        line = _error_line(result, 1)
        assert "No space left on device" in line and str(disk / "run") in line
        written = [p.relative_to(disk) for p in disk.rglob("*") if p.is_file()]
        assert not [p for p in written if p.name.endswith(".tmp")], written  # atomic writes: no torn files
        assert not [p for p in written if p.parts[1] == "_done"], written  # no video counts as done
