"""Rotation metadata (display matrix): curation decoding gives upright frames and probe the displayed size.

Two kinds of rotated copies of ``single_face.mp4`` are made here with PyAV's bundled FFmpeg (no ffmpeg
binary needed; ``VideoStream.set_display_rotation`` writes the display matrix):

- ``remux_with_rotation``: the same packets, only the display matrix added. Honouring it must give exactly
  the original pixels turned (the decoder sees the same bitstream).
- ``phone_copy``: what a phone records: the pixels stored turned (sideways), the display matrix turning them
  back. Honouring it gives the original's upright frames (up to re-encoding); ignoring it, sideways faces.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import av
import numpy as np
import pyarrow.dataset as ds
import pytest

from datakit.video.decode import DecodeStats, iter_frames, probe
from tests.conftest import MODELS, VIDEOS, build_in_subprocess

SINGLE_FACE = VIDEOS / "single_face.mp4"  # 640x360, 30 fps, 72 frames, one frontal man


def remux_with_rotation(src: Path, dst: Path, degrees: int) -> Path:
    """``src``'s video packets unchanged in a new mp4 whose display matrix turns them ``degrees`` (CCW)."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        video = source.streams.video[0]
        stream = out.add_stream_from_template(video)
        stream.set_display_rotation(degrees)
        for packet in source.demux(video):
            if packet.dts is None:  # the demuxer's final flush packet
                continue
            packet.stream = stream
            out.mux(packet)
    return dst


def phone_copy(src: Path, dst: Path, degrees: int) -> Path:
    """``src`` re-encoded with its pixels stored turned by ``-degrees`` and a display matrix of ``degrees``."""
    turns = degrees // 90
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        video = source.streams.video[0]
        stream = out.add_stream("libx264", rate=video.average_rate)
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "12"}  # near-lossless: compared with the original
        stream.set_display_rotation(degrees)
        for i, frame in enumerate(source.decode(video)):
            stored = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), -turns))  # (H', W', 3)
            if i == 0:
                stream.height, stream.width = stored.shape[:2]
            out.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        out.mux(stream.encode(None))
    return dst


def _frames(path: Path, indices: set[int]) -> dict[int, np.ndarray]:
    stats = DecodeStats()
    return {f.index: f.bgr() for f in iter_frames(path, 30.0, stats) if f.index in indices}


@pytest.fixture(scope="module")
def original_frames() -> dict[int, np.ndarray]:
    return _frames(SINGLE_FACE, {0, 35, 71})


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_metadata_only_copy_decodes_turned_by_its_display_matrix(tmp_path, original_frames, degrees):
    rotated = remux_with_rotation(SINGLE_FACE, tmp_path / f"rot{degrees}.mp4", degrees)
    info = probe(rotated)
    assert info.rotation_deg % 360 == degrees % 360
    assert (info.width, info.height) == ((360, 640) if degrees % 180 else (640, 360))  # the displayed size
    frames = _frames(rotated, set(original_frames))
    for index, original in original_frames.items():
        assert np.array_equal(frames[index], np.rot90(original, degrees // 90))  # same pixels, turned CCW


def test_thumbnails_are_turned_and_sized_like_the_displayed_frame(tmp_path, original_frames):
    rotated = remux_with_rotation(SINGLE_FACE, tmp_path / "rot90.mp4", 90)
    frame = next(iter_frames(rotated, 30.0, DecodeStats()))
    thumb = frame.thumbnail_bgr(90)
    assert thumb.shape == (160, 90, 3)  # 360x640 displayed, scaled to width 90
    expected = np.rot90(next(iter_frames(SINGLE_FACE, 30.0, DecodeStats())).thumbnail_bgr(160), 1)
    assert np.abs(thumb.astype(int) - expected.astype(int)).mean() < 4  # same picture, scaled per orientation


def test_phone_copy_decodes_upright(tmp_path, original_frames):
    copy = phone_copy(SINGLE_FACE, tmp_path / "phone.mp4", -90)  # stored as portrait, shown as landscape
    with av.open(str(copy)) as container:
        stored = next(container.decode(video=0))
        assert (stored.width, stored.height) == (360, 640)  # what a reader that ignores rotation sees
    info = probe(copy)
    assert (info.width, info.height, info.rotation_deg) == (640, 360, -90)
    frames = _frames(copy, set(original_frames))
    for index, original in original_frames.items():
        assert frames[index].shape == original.shape
        assert np.abs(frames[index].astype(int) - original.astype(int)).mean() < 3  # re-encoding loss only


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["yunet", "insightface"])
def test_a_build_of_the_original_and_its_phone_copy_finds_one_frontal_person(tmp_path, backend):
    """`datakit build` over single_face.mp4 and a copy recorded sideways with a display matrix, both stacks."""
    stack: dict = {"backend": backend}
    if backend == "insightface":
        pytest.importorskip("insightface")
        stack["insightface_pack"] = MODELS / "insightface_sc_int8"
    src = tmp_path / "src"
    src.mkdir()
    (src / "single_face.mp4").symlink_to(SINGLE_FACE)
    phone_copy(SINGLE_FACE, src / "phone_rotated.mp4", 90)
    out = tmp_path / "run"
    build_in_subprocess(src=src, out=out, models_dir=MODELS, workers=1, **stack)
    videos = {r["video_id"]: r for r in ds.dataset(out / "videos").to_table().to_pylist()}
    assert sorted((r["path"], r["width"], r["height"]) for r in videos.values()) == [
        ("phone_rotated.mp4", 640, 360),
        ("single_face.mp4", 640, 360),
    ]
    faces = ds.dataset(out / "faces").to_table(columns=["video_id", "view", "bbox"]).to_pylist()
    views = {path: Counter() for path in ("phone_rotated.mp4", "single_face.mp4")}
    for face in faces:
        views[videos[face["video_id"]]["path"]][face["view"]] += 1
        x0, y0, x1, y1 = face["bbox"]
        assert (y1 - y0) > (x1 - x0) * 0.9  # an upright face box is taller than wide, a sideways one wider
    for path, counts in views.items():
        assert counts and counts["frontal"] >= 0.8 * sum(counts.values()), (path, counts)
    tracks = ds.dataset(out / "tracks").to_table().to_pylist()
    identities = {videos[t["video_id"]]["path"]: t["identity_id"] for t in tracks if t["identity_id"]}
    assert set(identities) == {"phone_rotated.mp4", "single_face.mp4"}
    assert len(set(identities.values())) == 1, identities
