"""Shared test fixtures: paths to the real media and models beside the checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MEDIA = SHARED / "media"
VIDEOS = MEDIA / "videos"
STILLS = MEDIA / "stills"
MODELS = SHARED / "models"
#: training samples `datakit build` makes of the shipped footage (datakit-0.3.0: the Hamilton wide shot's
#: two-face track is a fragment, so that clip has no sample; datakit-0.5.0: foreman's 12 s shot is cut at
#: 10 s, and its last 2 s, the pan to the building, hold no face)
SHIPPED_SAMPLES = 13


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    if not VIDEOS.is_dir():
        pytest.fail(f"real test media missing: {VIDEOS} (../shared beside the checkout)")
    return VIDEOS


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


def run_datakit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The ``datakit`` command in a fresh interpreter (``python -m datakit.cli``), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "datakit.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def build_args(src: Path, out: Path, *extra: str) -> list[str]:
    """The arguments of a quiet one-worker ``datakit build`` of ``src`` into ``out`` with the shared models."""
    common = ["--models-dir", str(MODELS), "--workers", "1", "--quiet"]
    return ["build", "--src", str(src), "--out", str(out), *common, *extra]


_BUILD_CHILD = """
import json, sys
from datakit import BuildConfig
from pipelines import build
summary = build(BuildConfig(**json.loads(sys.argv[1])), progress=False)
print(json.dumps(summary.to_dict()))
"""


def build_in_subprocess(**config) -> dict:
    """Run :func:`datakit.build` in a fresh interpreter; returns the summary as a dict.

    Each build gets its own local Ray, started and stopped with its process, so no Ray runtime lives
    inside the pytest process (Ray's background threads outliving ``ray.shutdown`` have crashed it).
    """
    import json

    args = json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in config.items()})
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD_CHILD, args], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    if proc.returncode != 0:
        raise AssertionError(f"build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def shipped_build(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path, models_dir: Path) -> tuple[Path, dict]:
    """A ``datakit build`` run over the shipped footage, built once per session (~20 s): (run dir, summary).

    Shared by the datakit end-to-end tests and the training tests; none of them writes into it.
    """
    out = tmp_path_factory.mktemp("shipped") / "run"
    return out, build_in_subprocess(src=videos_dir, out=out, models_dir=models_dir, workers=2)


@pytest.fixture(scope="session")
def shipped_run(shipped_build: tuple[Path, dict]) -> Path:
    """The run directory of `shipped_build`."""
    return shipped_build[0]
