"""Probe, streaming decode and shot detection on the real footage."""

from __future__ import annotations

import pytest

from datakit.video.decode import DecodeStats, VideoError, iter_frames, probe
from datakit.video.shots import Segment, ShotDetector, split_long
from tests.conftest import STILLS, VIDEOS


def _shots(name: str) -> tuple[list[Segment], DecodeStats]:
    info = probe(VIDEOS / name)
    stats, det = DecodeStats(), ShotDetector(info.fps)
    for frame in iter_frames(VIDEOS / name, info.fps, stats):
        det.push(frame.index, frame.t_s, frame.bgr() if frame.index % 2 else frame.thumbnail_bgr(160))
    return det.segments(), stats


def test_probe_reads_stream_metadata():
    info = probe(VIDEOS / "hamilton_white_house.mp4")
    assert (info.width, info.height, info.codec) == (640, 360, "h264")
    assert info.fps == pytest.approx(29.97, abs=0.01)


def test_probe_rejects_a_still_image():
    # FFmpeg happily opens a JPEG as a one-frame stream; probe must not take it for footage
    with pytest.raises(VideoError, match="still image"):
        probe(STILLS / "obama.jpg")


def test_hamilton_cuts_match_the_annotated_shots():
    segments, stats = _shots("hamilton_white_house.mp4")
    assert stats.num_frames == 275 and stats.error is None
    # media README: cuts near frames 20, 82, 211
    starts = [s.start_frame for s in segments]
    assert len(starts) == 4
    for got, want in zip(starts[1:], [20, 82, 211], strict=True):
        assert abs(got - want) <= 2
    assert segments[-1].end_frame == 275


def test_hevc_mov_decodes_every_frame_sequentially():
    segments, stats = _shots("face_then_noface_hevc.mov")
    assert stats.num_frames == 169
    assert segments[0].start_frame == 0 and segments[-1].end_frame == 169


def test_single_shot_video_is_one_segment():
    segments, _ = _shots("foreman_cif.mp4")
    assert len(segments) == 1 and segments[0].num_frames == 299


def test_split_long_cuts_into_equal_bounded_pieces():
    pieces = split_long([Segment(0, 300, 0.0, 12.0)], fps=25.0, max_clip_s=5.0)
    assert [(p.start_frame, p.end_frame) for p in pieces] == [(0, 100), (100, 200), (200, 300)]
    assert all(p.end_s - p.start_s <= 5.0 + 1e-9 for p in pieces)
    assert split_long([Segment(0, 10, 0.0, 0.4)], 25.0, 5.0)[0].num_frames == 10
