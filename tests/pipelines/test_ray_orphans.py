"""No Ray process outlives a ``datakit build`` that is killed with ``kill -9`` (pipelines.ray_orphans).

The end-to-end tests give each build its own Ray temp folder (``RAY_TMPDIR``), so that the processes of
that run, and only those, are found by it (in their command line or environment): concurrent test runs'
Ray processes are never looked at, let alone signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from datakit.store import RunDir
from pipelines import ray_orphans
from tests.conftest import MODELS, ROOT, VIDEOS

VIDEO_NAMES = ("single_face.mp4", "cisco_two_people.mp4", "no_face.mp4")
KILL_WAIT_S = 10.0


def _sleeper(token: str, *, new_session: bool = False) -> subprocess.Popen:
    """A process that carries session ``token`` the way a Ray process does (inherited environment); none if empty."""
    env = {**os.environ, ray_orphans.TOKEN_VAR: token} if token else dict(os.environ)
    cmd = [sys.executable, "-c", "import time; time.sleep(300)"]
    return subprocess.Popen(cmd, env=env, start_new_session=new_session)


def _wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_orphans_of_a_dead_driver_are_killed_on_the_next_start_and_no_one_else(tmp_path):
    dead, alive = ray_orphans.new_token(), ray_orphans.new_token()
    orphans = [_sleeper(dead), _sleeper(dead, new_session=True)]
    renamed = _sleeper("")  # noted with the token earlier, whose environment no longer shows it (a Ray agent)
    reused = _sleeper("")  # a noted pid whose start time differs: the pid was reused, not ours
    bystander = _sleeper(alive)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    noted = [
        [renamed.pid, ray_orphans._start_ticks(renamed.pid)],
        [reused.pid, ray_orphans._start_ticks(reused.pid) - 1],
    ]
    folder = ray_orphans.record_dir()
    folder.mkdir(mode=0o700, exist_ok=True)
    dead_record, alive_record = folder / f"{dead}.json", folder / f"{alive}.json"
    record = {"token": dead, "driver_pid": int(gone.stdout), "driver_start": 1, "pids": noted}
    dead_record.write_text(json.dumps(record))
    me = {"token": alive, "driver_pid": os.getpid(), "driver_start": ray_orphans._start_ticks(os.getpid())}
    alive_record.write_text(json.dumps(me))
    try:
        assert _wait_for(lambda: len(ray_orphans.session_pids(dead)) == 2, 10)
        assert ray_orphans.kill_orphaned_sessions() >= 3
        assert all(p.wait(timeout=10) == -signal.SIGKILL for p in (*orphans, renamed))
        assert reused.poll() is None and bystander.poll() is None and not dead_record.exists()
        assert alive_record.exists()  # its driver (this process) lives: a concurrent build, left alone
    finally:
        alive_record.unlink(missing_ok=True)
        for p in (*orphans, renamed, reused, bystander):
            p.kill()
            p.wait()


def test_the_watchdog_notes_its_session_and_ends_it_when_released():
    token = ray_orphans.new_token()
    member = _sleeper(token)
    watchdog = ray_orphans.Watchdog(token)
    assert watchdog.record is not None and watchdog.record.exists()
    noted = lambda: json.loads(watchdog.record.read_text()).get("pids", [])  # noqa: E731
    assert _wait_for(lambda: [member.pid, ray_orphans._start_ticks(member.pid)] in noted(), 10)
    assert member.poll() is None  # the driver is alive: nothing happens
    watchdog.release()
    assert member.wait(timeout=10) == -signal.SIGKILL
    assert _wait_for(lambda: not watchdog.record.exists(), 10)


def _run_processes(marker: str) -> dict[int, str]:
    """Live processes (not zombies) whose command line or environment names ``marker``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (marker.encode() in cmdline or marker.encode() in environ):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:160]
    return found


def _reached(moment: str, raytmp: Path, out: Path) -> bool:
    if moment == "ray-start":  # the raylet is up: workers are being started
        return any(raytmp.glob("ray/session_*/logs/raylet.out"))
    done = len(RunDir(out).done_ids()) if out.is_dir() else 0
    return done >= (1 if moment == "videos" else len(VIDEO_NAMES))  # "global": every video is done


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("moment", "target"),
    [("ray-start", "group"), ("ray-start", "driver"), ("videos", "group"), ("global", "driver")],
)  # fmt: skip
def test_kill_9_of_a_build_leaves_no_ray_process_10_s_later(tmp_path, moment, target):
    src = tmp_path / "src"
    src.mkdir()
    for name in VIDEO_NAMES:
        (src / name).symlink_to(VIDEOS / name)
    out = tmp_path / "run"
    raytmp = Path(tempfile.mkdtemp(prefix="dkkill", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(raytmp)}
    cmd = [sys.executable, "-m", "datakit.cli", "build", "--src", str(src), "--out", str(out)]
    cmd += ["--models-dir", str(MODELS), "--workers", "2", "--quiet"]
    driver = subprocess.Popen(
        cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        reached = _wait_for(lambda: _reached(moment, raytmp, out) or driver.poll() is not None, 420)
        assert reached and driver.poll() is None, f"the build ended (rc {driver.returncode}) before {moment}"
        before = _run_processes(str(raytmp))
        if target == "group":
            os.killpg(driver.pid, signal.SIGKILL)
        else:
            os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        time.sleep(KILL_WAIT_S)
        left = _run_processes(str(raytmp))
        assert len(before) > 1, before  # the moment had Ray processes to leave behind
        assert not left, f"alive {KILL_WAIT_S:g} s after kill -9 of the {target} at {moment}: {left}"
    finally:
        for pid in _run_processes(str(raytmp)):  # this run's only
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(raytmp, ignore_errors=True)
