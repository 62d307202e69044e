"""``datakit build`` against a real Ray cluster that the test starts with ``ray start --head``.

The head runs with token authentication (Ray's default once a token exists) and its own Ray temp folder
(``RAY_TMPDIR``), so the ``ray_current_cluster`` file that made a plain ``ray.init()`` join a running
cluster is written there, not in the machine's ``/tmp/ray``; a local build given that ``RAY_TMPDIR`` meets
exactly that situation. Teardown stops only the processes this head started (its process group, then
any process whose command line names its temp folder), never ``ray stop``, which would stop every Ray
of the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, VIDEOS

pytestmark = pytest.mark.slow

VIDEO_NAMES = ("single_face.mp4", "cisco_two_people.mp4", "no_face.mp4")
KEYS = {
    "videos": "video_id",
    "clips": "clip_id",
    "faces": "face_id",
    "tracks": "track_id",
    "identities": "identity_id",
}
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without Ray address/auth settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(extra)
    return env


def _datakit(*args: str, env: dict[str, str], timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "datakit.cli", "build", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    return proc, time.monotonic() - started


def _ids(run: Path) -> dict[str, list[str]]:
    return {t: sorted(pq.read_table(run / t)[k].to_pylist()) for t, k in KEYS.items()}


def _pids_naming(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


class Head:
    def __init__(self, tmp: Path, port: int, token: str, proc: subprocess.Popen) -> None:
        self.tmp, self.port, self.token, self.proc = tmp, port, token, proc
        self.address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop this head's processes only: its process group, then stragglers naming its temp folder."""
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            for pid in _pids_naming(str(self.tmp)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (self.proc.poll() is None or _pids_naming(str(self.tmp))):
                time.sleep(0.5)
            if self.proc.poll() is not None and not _pids_naming(str(self.tmp)):
                break
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    # A short folder of our own: Ray's unix sockets live below it and their paths must stay < 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="dkray", dir="/tmp"))
    port, token = _free_port(), secrets.token_hex(32)
    env = _env(RAY_TMPDIR=str(tmp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--num-cpus=2",
        "--disable-usage-stats",
        "--include-dashboard=false",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
    ]
    log = open(tmp / "head.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = Head(tmp, port, token, proc)
    try:
        marker = tmp / "ray" / "ray_current_cluster"  # written once the head is up
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up:\n{(tmp / 'head.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield started
    finally:
        started.stop()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cluster_src")
    for name in VIDEO_NAMES:
        shutil.copy(VIDEOS / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def local_run(head: Head, src: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain local build (no address) while the head runs, seeing its ``ray_current_cluster``."""
    out = tmp_path_factory.mktemp("cluster_local") / "run"
    assert (head.tmp / "ray" / "ray_current_cluster").exists()
    sessions = set((head.tmp / "ray").glob("session_2*"))
    proc, _ = _datakit(
        "--src", str(src), "--out", str(out), "--models-dir", str(models_dir), "--workers", "2", "--quiet",
        env=_env(RAY_TMPDIR=str(head.tmp)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "constructor arguments" not in proc.stderr  # Ray's core_worker.cc warning stays in Ray's logs
    # its own Ray: a new session folder beside the head's (joining the head would have made none, and
    # failed on num_cpus before the fix)
    assert len(set((head.tmp / "ray").glob("session_2*")) - sessions) == 1
    return out


def test_plain_local_build_beside_a_running_cluster_starts_its_own_ray(local_run: Path) -> None:
    ids = _ids(local_run)
    assert len(ids["videos"]) == len(VIDEO_NAMES) and ids["faces"] and ids["identities"]


def test_build_on_the_cluster_gives_the_ids_of_a_local_build(
    head: Head, src: Path, models_dir: Path, local_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    env = _env(RAY_TMPDIR=str(head.tmp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head.token)
    proc, _ = _datakit(
        "--src", str(src), "--out", str(out), "--models-dir", str(models_dir), "--quiet", "--address", head.address,
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "constructor arguments" not in proc.stderr
    assert _ids(out) == _ids(local_run)


@pytest.mark.parametrize(
    ("auth", "says"),
    [({}, "requires token authentication: set RAY_AUTH_MODE=token"), ({"RAY_AUTH_TOKEN": "0" * 64}, "rejected")],
    ids=["no-auth-mode", "wrong-token"],
)
def test_cluster_auth_problem_is_a_one_line_error_that_says_what_to_set(
    head: Head, src: Path, models_dir: Path, tmp_path: Path, auth: dict, says: str
) -> None:
    env = _env(RAY_TMPDIR=str(head.tmp), **({"RAY_AUTH_MODE": "token", **auth} if auth else {}))
    proc, seconds = _datakit(
        "--src", str(src), "--out", str(tmp_path / "run"), "--models-dir", str(models_dir), "--quiet",
        "--address", head.address,
        env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert says in lines[0] and "auth_token" in lines[0] and "RAY_AUTH_TOKEN" in lines[0], lines[0]
    assert seconds < 30


def test_wrong_address_is_a_one_line_error_within_30_s(src: Path, models_dir: Path, tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    proc, seconds = _datakit(
        "--src", str(src), "--out", str(tmp_path / "run"), "--models-dir", str(models_dir), "--quiet",
        "--address", address,
        env=_env(RAY_AUTH_MODE="token"), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot reach the Ray cluster at {address}" in lines[0] and "--address / RAY_ADDRESS" in lines[0]
    assert seconds < 30


def test_plain_local_build_after_a_cluster_died(models_dir: Path, tmp_path: Path) -> None:
    """``ray_current_cluster`` left behind by a cluster that is gone: a local build still runs."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="dkray", dir="/tmp"))
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}")
        one = tmp_path / "src"
        one.mkdir()
        shutil.copy(VIDEOS / VIDEO_NAMES[0], one / VIDEO_NAMES[0])
        proc, _ = _datakit(
            "--src", str(one), "--out", str(tmp_path / "run"), "--models-dir", str(models_dir), "--workers", "1",
            "--quiet",
            env=_env(RAY_TMPDIR=str(ray_tmp)),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(_ids(tmp_path / "run")["videos"]) == 1
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
