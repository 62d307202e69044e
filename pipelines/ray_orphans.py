"""No Ray process outlives the build that started it, even after ``kill -9`` (Linux).

Ray ties its head processes (GCS, raylet, ...) to the driver with ``PR_SET_PDEATHSIG``, but measured on
Ray 2.60 that is not enough: after ``kill -9`` of the driver alone its dashboard and runtime-env agents
(children of the dead raylet) lived on in 4 of 5 tries, and after ``kill -9`` of the driver's whole
process group 2 workers that were starting (each in a process group of its own) lived on in 1 of 5.

So every process of a local Ray carries a session token in its environment (:data:`TOKEN_VAR`, set only
while ``ray.init`` starts the head, inherited by everything the head starts), and:

* a watchdog (this file run as a script, in a session of its own so that a signal to the driver's group
  does not reach it) holds the read end of a pipe whose write end only the driver holds. While the driver
  lives it notes the session's processes (pid and start time) every second; when the driver dies, however
  it dies, the pipe reads EOF and the watchdog kills every process that carries the token or was noted
  with it, then exits;
* a record per session (:func:`record_dir`) names the token, the driver and the noted processes; the next
  local start kills those of any recorded session whose driver is gone, in case the watchdog died too.

Only processes of this user that were seen with the exact token in their environment are ever signalled
(a noted pid only while its start time is the noted one, so a reused pid is safe). This module
uses the standard library only: the watchdog runs it as a script, without importing Ray.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKEN_VAR = "DATAKIT_RAY_SESSION"
SCAN_INTERVAL_S = 1.0  #: how often the watchdog notes the session's processes while the driver lives
_PROC = Path("/proc")


def new_token() -> str:
    """A fresh session token."""
    return secrets.token_hex(12)


def record_dir() -> Path:
    """This user's folder of session records (``<tmp>/datakit-ray-<uid>``, mode 0700)."""
    return Path(tempfile.gettempdir()) / f"datakit-ray-{os.getuid()}"


def session_pids(token: str) -> list[int]:
    """Live processes of this user whose environment holds ``TOKEN_VAR=token`` (never this process)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in _PROC.iterdir() if _PROC.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_session(token: str, known: dict[int, int] | None = None, *, rounds: int = 3, pause_s: float = 0.3) -> int:
    """SIGKILL every process of session ``token``: those whose environment holds it, and the ``known`` ones
    (pid -> start ticks, seen with it earlier) that still run; again until a round finds none (a worker being
    forked by a dying raylet may appear late). Returns how many were signalled."""
    killed = 0
    for _ in range(rounds):
        pids = set(session_pids(token))
        pids |= {pid for pid, started in (known or {}).items() if _start_ticks(pid) == started}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        if not pids:
            break
        time.sleep(pause_s)
    return killed


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None when there is no such process: a pid and
    its start time name one process even after the pid is reused."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the command name may hold spaces and ")"


def _records() -> Path | None:
    """The record folder, created if needed; None when it is not this user's own (shared /tmp) or unusable."""
    folder = record_dir()
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return None
    return folder if info.st_uid == os.getuid() and not folder.is_symlink() and folder.is_dir() else None


def kill_orphaned_sessions() -> int:
    """Kill the processes of every recorded session whose driver is gone and drop its record; returns how
    many processes were signalled."""
    folder = _records()
    if folder is None or not _PROC.is_dir():
        return 0
    killed = 0
    for path in folder.glob("*.json"):
        try:
            record = json.loads(path.read_text())
            token, pid, started = str(record["token"]), int(record["driver_pid"]), record["driver_start"]
            known = {int(p): int(t) for p, t in record.get("pids", [])}
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if _start_ticks(pid) == started and started is not None:
            continue  # its driver is alive: a concurrent build
        killed += kill_session(token, known)
        path.unlink(missing_ok=True)
    return killed


class Watchdog:
    """The watchdog of one local Ray session (see the module docstring); :meth:`release` ends it now."""

    def __init__(self, token: str) -> None:
        self.token = token
        folder = _records()
        self.record = folder / f"{token}.json" if folder else None
        if self.record is not None:
            pid = os.getpid()
            self.record.write_text(json.dumps({"token": token, "driver_pid": pid, "driver_start": _start_ticks(pid)}))
        read_end, self._write_end = os.pipe()  # not inheritable: no other child holds the write end
        try:
            subprocess.Popen(
                [sys.executable, "-I", __file__, token, str(self.record or "")],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # out of the driver's process group: a kill -9 of the group spares it
                env={k: v for k, v in os.environ.items() if k != TOKEN_VAR},
            )
        finally:
            os.close(read_end)

    def release(self) -> None:
        """Let the watchdog sweep now (the session was shut down) and exit."""
        if self._write_end is not None:
            os.close(self._write_end)
            self._write_end = None


def _watch(token: str, record: str) -> None:
    """The watchdog's body: until EOF on stdin (the driver is gone), note the session's processes every
    :data:`SCAN_INTERVAL_S` (in the record too); then kill them all.

    Noting them early matters: a Ray agent renames itself (``ray::DashboardAgent``) by writing its title
    over its argument and environment area, which can wipe the token from what ``/proc`` shows of it later.
    """
    known: dict[int, int] = {}
    while True:
        try:
            ready, _, _ = select.select([0], [], [], SCAN_INTERVAL_S)
            if ready and not os.read(0, 4096):
                break
        except OSError:
            break
        if _note(token, known) and record:
            _save_pids(Path(record), known)
    kill_session(token, known)
    if record:
        Path(record).unlink(missing_ok=True)


def _note(token: str, known: dict[int, int]) -> bool:
    """Add the session's live processes to ``known`` (pid -> start ticks); True when one was new."""
    new = False
    for pid in session_pids(token):
        started = _start_ticks(pid)
        if started is not None and known.get(pid) != started:
            known[pid], new = started, True
    return new


def _save_pids(record: Path, known: dict[int, int]) -> None:
    """Write the known pids into the session's record (for the next start's check), atomically."""
    try:
        data = json.loads(record.read_text())
        data["pids"] = sorted(known.items())
        tmp = record.with_name(f".{record.name}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(record)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    _watch(sys.argv[1], sys.argv[2])
