"""The per-video step on real footage: tables, ids, bounded embedding work, failure isolation."""

from __future__ import annotations

import numpy as np
import pytest

from datakit import schema
from datakit.config import BuildConfig
from datakit.faces import build_face_stack
from datakit.video.decode import probe
from datakit.video.discover import discover
from datakit.video.job import process_video
from datakit.video.rows import probe_columns, videos_row, videos_table
from datakit.video.shots import Segment
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


def test_the_videos_row_has_every_column_and_falls_back_to_the_clips_for_its_duration():
    src = _source("single_face.mp4")
    info = probe(src.path)
    clips = [Segment(0, 10, 0.0, 0.4), Segment(10, 30, 0.4, 1.2)]
    row = videos_row(src, "ok", probe=probe_columns(info), num_frames=30, clips=clips)
    assert set(row) == set(schema.VIDEOS.names) and videos_table(row).to_pylist() == [row]
    assert row["width"] == info.width and row["duration_s"] == info.duration_s > 0
    unknown = {**probe_columns(info), "duration_s": None}  # a container that does not say how long it is
    assert videos_row(src, "ok", probe=unknown, clips=clips)["duration_s"] == 1.2
    assert videos_row(src, "ok", probe=unknown, clips=[])["duration_s"] is None
    assert videos_row(src, "failed", probe=unknown)["duration_s"] is None  # not decoded: no clips to go by
    copy = videos_row(src, "duplicate", error="same content as x", video_id="p_1")
    assert copy["video_id"] == "p_1" and copy["path"] == src.rel_path and copy["fps"] is None


def test_clips_carry_the_fingerprint_of_their_sampled_frames(stack):
    """Each clip holds one hash per sampled non-flat frame, inside its time range; the two files of one
    recording (single_face.mp4, the first shot of face_then_noface_hevc.mov) get the same hashes."""
    from datakit.passes.contexts import shares_footage

    cfg = BuildConfig(src=VIDEOS, out="unused")
    prints = {}
    for name in ("single_face.mp4", "face_then_noface_hevc.mov"):
        clips = process_video(_source(name), stack, cfg).tables["clips"].to_pylist()
        for clip in clips:
            assert len(clip["fingerprint"]) == len(clip["fingerprint_t_s"]) >= 2
            assert all(clip["start_s"] - 1e-6 <= t < clip["end_s"] for t in clip["fingerprint_t_s"])
            assert clip["context_id"] is None  # the global pass fills it
        prints[name] = [(np.array(c["fingerprint"]), np.array(c["fingerprint_t_s"])) for c in clips]
    single, copy = prints["single_face.mp4"][0], prints["face_then_noface_hevc.mov"][0]
    assert sum(a == b for a, b in zip(single[0], copy[0], strict=False)) >= len(single[0]) // 2
    assert shares_footage(single, copy, step_s=1 / cfg.sample_fps)
    assert not shares_footage(single, prints["face_then_noface_hevc.mov"][1], step_s=1 / cfg.sample_fps)
