"""The Ray runtime of a run: this run's own local Ray, or a checked connection to a cluster.

A local run never joins a cluster that ``ray start`` left in ``/tmp/ray``; ``--address`` / ``RAY_ADDRESS``
is probed first so that a wrong address or a missing auth token is one line, not minutes of retries.
Ray's native log lines that say nothing a user can act on are kept off the terminal (:class:`_StderrFilter`).
No process of a local Ray outlives its driver, ``kill -9`` included (:mod:`pipelines.ray_orphans`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import ray

from datakit.config import BuildConfig
from pipelines import ray_orphans


class ClusterConnectionError(RuntimeError):
    """``--address`` / ``RAY_ADDRESS`` names a Ray cluster this process cannot use (unreachable, auth)."""


#: seconds for each check of a cluster address (TCP connect, then one GCS handshake)
CLUSTER_PROBE_TIMEOUT_S = 5.0
_ADDRESS_HINT = "check --address / RAY_ADDRESS"


def init_ray(cfg: BuildConfig) -> None:
    """Start this run's own local Ray, or connect to the cluster of ``--address`` / ``RAY_ADDRESS``.

    A local run never joins a cluster that ``ray start`` left in ``/tmp/ray`` (``address="local"``): the
    per-run worker count is ours to set. A cluster address is checked first (TCP, then one GCS
    handshake, a few seconds each) so that a wrong address or a missing auth token is one
    :class:`ClusterConnectionError` line instead of Ray's minutes of retries and a traceback.
    """
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Keep the terminal to our progress bar and summary; Ray Data still logs to its session log file.
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_data_logging.yaml")))
    if address and address != "local":
        _check_cluster(address)
        # A remote cluster needs our code: ship the two packages (its nodes need the dependencies). This
        # package's folder is this file's, not `import pipelines`, which would close an import circle.
        import datakit

        runtime_env = {"py_modules": [os.path.dirname(datakit.__file__), os.path.dirname(__file__)]}
        try:
            with _quiet_native_stderr():
                ray.init(address=address, runtime_env=runtime_env, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ClusterConnectionError(
                f"cannot connect to the Ray cluster at {address}: {first}; {_ADDRESS_HINT}"
            ) from err
    else:
        _start_local(cfg)
    _StderrFilter.install()
    logging.getLogger("ray").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is one bar over videos
    ctx.print_on_execution_start = False


def _start_local(cfg: BuildConfig) -> None:
    """Start this run's own local Ray, every process of it tied to this driver (pipelines.ray_orphans):
    processes of earlier runs whose driver was killed are ended first, and a watchdog ends this run's
    when this process dies, ``kill -9`` included."""
    global _watchdog
    ray_orphans.kill_orphaned_sessions()
    if _watchdog is not None:
        _watchdog.release()  # an earlier session of this process, shut down since: sweep what is left of it
    token = ray_orphans.new_token()
    watchdog = ray_orphans.Watchdog(token)  # before ray.init: a kill while Ray starts is covered too
    os.environ[ray_orphans.TOKEN_VAR] = token  # inherited by the head's processes, and by theirs
    try:
        ray.init(
            address="local",  # never the cluster named in /tmp/ray/ray_current_cluster
            num_cpus=cfg.workers or os.cpu_count(),
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    except BaseException:
        watchdog.release()  # whatever started is ended
        raise
    finally:
        os.environ.pop(ray_orphans.TOKEN_VAR, None)  # later children of this process are not Ray's
    _watchdog = watchdog


#: the watchdog of this process's local Ray session (pipelines.ray_orphans), None before the first
_watchdog: ray_orphans.Watchdog | None = None


#: the last "<SomeError>: [Errno N] ..." line of a remote traceback (Python's and pyarrow's spellings)
_REMOTE_OS_ERROR = re.compile(r"^(\w+Error): .*?\[errno (\d+)\][^\n]*?(?:: '([^'\n]+)')?$", re.I | re.M)


def os_error_of(err: BaseException) -> OSError | None:
    """The OS error (a full disk, a read-only or vanished folder) that made a Ray task fail, or None.

    Ray hands the driver a ``RayTaskError`` whose cause is Ray Data's ``UserCodeException``: the worker's
    ``OSError`` survives only as text in the remote traceback, so it is rebuilt from its last
    ``[Errno N]`` line (with the path when the line names one)."""
    if not isinstance(err, ray.exceptions.RayError):
        return None
    text = getattr(err, "traceback_str", None) or str(err)
    found = list(_REMOTE_OS_ERROR.finditer(text))
    if not found:
        return None
    errno = int(found[-1].group(2))
    return OSError(errno, os.strerror(errno), *([found[-1].group(3)] if found[-1].group(3) else []))


def _check_cluster(address: str) -> None:
    """Raise :class:`ClusterConnectionError` unless a Ray GCS that accepts this client answers at ``address``."""
    import socket

    if address == "auto":  # Ray's own look-up of a local cluster; its errors are wrapped by the caller
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ClusterConnectionError(f"{address!r} is not a Ray cluster address (HOST:PORT); {_ADDRESS_HINT}")
    try:
        socket.create_connection((host, int(port)), timeout=CLUSTER_PROBE_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise ClusterConnectionError(f"cannot reach the Ray cluster at {address}: {reason}; {_ADDRESS_HINT}") from err
    if address.startswith("ray://"):
        return  # a Ray Client server, not a GCS: ray.init checks the rest
    try:
        from ray._private.services import canonicalize_bootstrap_address
        from ray._raylet import InnerGcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # another Ray version: ray.init's own checks only
        return
    try:
        with _quiet_native_stderr():
            InnerGcsClient.standalone(
                canonicalize_bootstrap_address(address), None, int(CLUSTER_PROBE_TIMEOUT_S * 1000)
            )
    except AuthenticationError as err:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            what = "rejected this client's auth token: use the head node's token"
        else:
            what = "requires token authentication: set RAY_AUTH_MODE=token and provide the head node's token"
        raise ClusterConnectionError(
            f"the Ray cluster at {address} {what} (its ~/.ray/auth_token, copied to this machine's "
            "~/.ray/auth_token, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)"
        ) from err
    except (TypeError, AttributeError):  # another Ray version's signature: ray.init's own checks only
        return
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterConnectionError(
            f"cannot reach the Ray cluster at {address}: no Ray GCS answered ({first}); {_ADDRESS_HINT}"
        ) from err


class _quiet_native_stderr:
    """Send file descriptor 2 to /dev/null for a while: Ray's C++ client logs each failed attempt there."""

    def __enter__(self) -> None:
        import sys

        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)


#: lines of Ray's native logs that say nothing a user can act on, kept from the terminal (still in Ray's logs)
_NATIVE_NOISE = (
    # Ray Data passes its own context and transform to every map actor as object-store arguments and turns
    # on actor restarts (which datakit needs, see pipelines.video_pool.MAX_ATTEMPTS): the driver's core
    # worker warns each run.
    b"has constructor arguments in the object store and max_restarts > 0",
)


class _StderrFilter:
    """Pass file descriptor 2 through a thread that drops :data:`_NATIVE_NOISE` lines.

    Ray's C++ core worker writes error-level lines to the driver's stderr as well as to its log file
    (``python-core-driver-*.log`` in the session folder), so a Python logging setting cannot hide them.
    Installed once per process after ``ray.init`` (so Ray's own processes keep the real stderr); at exit
    the real stderr is put back after everything written so far went through.
    """

    _END = b"\0datakit-stderr-filter-end\0\n"
    _installed = False

    @classmethod
    def install(cls) -> None:
        import atexit
        import sys
        import threading

        if cls._installed:
            return
        cls._installed = True
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        pump = threading.Thread(target=cls._pump, args=(read_end, real), name="datakit-stderr", daemon=True)
        pump.start()
        atexit.register(cls._restore, real, write_end, pump)

    @classmethod
    def _pump(cls, read_end: int, real: int) -> None:
        pending = b""
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            done = cls._END in chunk
            pending += chunk.split(cls._END)[0]
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not any(n in line for n in _NATIVE_NOISE))
            if pending and (done or not pending.startswith(b"[")):  # a progress bar's \r line: now, not at \n
                out, pending = out + pending, b""
            try:
                while out:
                    out = out[os.write(real, out) :]
            except OSError:
                pass  # the terminal went away (a closed pipe): keep draining, or writers to fd 2 would block
            if done:
                break

    @classmethod
    def _restore(cls, real: int, write_end: int, pump) -> None:
        import contextlib
        import sys

        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(real, 2)
        os.write(write_end, cls._END)
        pump.join(timeout=5)
