"""The per-video workers get the driver's stack choice pinned (no silent per-node fallback on a cluster)."""

from __future__ import annotations

from datakit.config import BuildConfig
from datakit.faces import build_face_stack
from pipelines.build import _worker_config
from tests.conftest import MODELS, VIDEOS


def test_auto_is_pinned_to_the_stack_the_driver_loaded(tmp_path, monkeypatch):
    cfg = BuildConfig(src=VIDEOS, out=tmp_path / "run", models_dir=MODELS)
    pinned = _worker_config(cfg, build_face_stack("auto", models_dir=MODELS))
    assert pinned.backend == "yunet" and pinned.models_dir == MODELS
    assert cfg.backend == "auto"  # what run.json records is unchanged

    monkeypatch.delenv("DATAKIT_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # nothing fetched on this machine
    bare = BuildConfig(src=VIDEOS, out=tmp_path / "run2")
    pinned = _worker_config(bare, build_face_stack("auto"))
    assert pinned.backend == "dlib"
    assert pinned.models_dir == tmp_path / "empty-cache" / "harmoview" / "models"  # explicit for every node
