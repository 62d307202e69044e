"""The per-video step on real footage: tables, ids, bounded embedding work, failure isolation."""

from __future__ import annotations

import pytest

from datakit.config import BuildConfig
from datakit.faces import build_face_stack
from datakit.video.discover import discover
from datakit.video.job import process_video
from tests.conftest import MODELS, VIDEOS


@pytest.fixture(scope="module")
def stack():
    return build_face_stack("yunet", models_dir=MODELS)


def _source(name: str):
    return next(s for s in discover(VIDEOS) if s.rel_path == name)


def test_one_video_yields_consistent_tables_with_deterministic_ids(stack):
    cfg = BuildConfig(src=VIDEOS, out="unused", embed_per_track=2)
    first = process_video(_source("cisco_two_people.mp4"), stack, cfg)
    again = process_video(_source("cisco_two_people.mp4"), stack, cfg)
    faces, tracks = first.tables["faces"], first.tables["tracks"]
    assert first.status == "ok" and faces.num_rows >= 4 and tracks.num_rows == 2
    assert faces["face_id"].to_pylist() == again.tables["faces"]["face_id"].to_pylist()
    assert set(faces["track_id"].to_pylist()) == set(tracks["track_id"].to_pylist())
    # embedding is bounded per track, and only faces big enough to embed are embedded
    for t in tracks.to_pylist():
        assert t["num_embedded"] <= 2
    assert all(
        e is None or px >= stack.embedder.min_embed_px
        for e, px in zip(faces["embedding"].to_pylist(), faces["face_px"].to_pylist(), strict=True)
    )


def test_a_library_failure_inside_a_video_becomes_an_error_row(stack, monkeypatch):
    def broken(frame, min_score=None):
        raise RuntimeError("detector exploded")

    monkeypatch.setattr(stack.detector, "detect", broken)
    out = process_video(_source("single_face.mp4"), stack, BuildConfig(src=VIDEOS, out="unused"))
    assert out.status == "failed"
    error = out.tables["errors"].to_pylist()[0]
    assert error["error_type"] == "RuntimeError" and "detector exploded" in error["message"]
    assert out.tables["videos"]["status"].to_pylist() == ["failed"]


def test_a_video_that_keeps_killing_workers_is_given_up(tmp_path):
    import numpy as np

    from datakit.store import RunDir
    from pipelines.build import MAX_ATTEMPTS, _worker_class

    src = _source("single_face.mp4")
    worker = _worker_class(BuildConfig(src=VIDEOS, out=tmp_path, models_dir=MODELS))()
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
