"""The per-video stage's actors (pipelines.video_pool): the driver's stack choice pinned for every worker (no
silent per-node fallback on a cluster), and a video that keeps killing workers given up."""

from __future__ import annotations

import numpy as np

from datakit.config import BuildConfig
from datakit.faces import build_face_stack
from datakit.store import RunDir
from datakit.video.discover import discover
from pipelines.pools import bind_config
from pipelines.video_pool import MAX_ATTEMPTS, VideoWorker, worker_config
from tests.conftest import MODELS, VIDEOS


def test_auto_is_pinned_to_the_stack_the_driver_loaded(tmp_path, monkeypatch):
    cfg = BuildConfig(src=VIDEOS, out=tmp_path / "run", models_dir=MODELS)
    pinned = worker_config(cfg, build_face_stack("auto", models_dir=MODELS))
    assert pinned.backend == "yunet" and pinned.models_dir == MODELS
    assert cfg.backend == "auto"  # what run.json records is unchanged

    monkeypatch.delenv("DATAKIT_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # nothing fetched on this machine
    bare = BuildConfig(src=VIDEOS, out=tmp_path / "run2")
    pinned = worker_config(bare, build_face_stack("auto"))
    assert pinned.backend == "dlib"
    assert pinned.models_dir == tmp_path / "empty-cache" / "harmoview" / "models"  # explicit for every node


def test_a_video_that_keeps_killing_workers_is_given_up(tmp_path):
    src = next(s for s in discover(VIDEOS) if s.rel_path == "single_face.mp4")
    worker = bind_config(VideoWorker, BuildConfig(src=VIDEOS, out=tmp_path, models_dir=MODELS))()
    batch = {
        k: np.array([v])
        for k, v in {
            "path": str(src.path),
            "rel_path": src.rel_path,
            "video_id": src.video_id,
            "size_bytes": src.size_bytes,
            "kind": src.kind,
            "problem": "",
        }.items()
    }
    run = RunDir(tmp_path)
    for _ in range(MAX_ATTEMPTS):  # earlier workers started on it and died before writing anything
        run.count_attempt(src.video_id)
    out = worker(batch)
    assert out["status"] == ["failed"] and src.video_id in run.done_ids()
    error = run.read("errors").to_pylist()[0]
    assert error["error_type"] == "WorkerCrash" and "skipped" in error["message"]
    assert run.read("videos").to_pylist()[0]["status"] == "failed"
