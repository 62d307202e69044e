"""Probe, streaming decode and shot detection on the real footage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from datakit.video.decode import DecodeStats, VideoError, iter_frames, probe
from datakit.video.shots import ClipCutter, Segment, ShotDetector
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


def test_clips_cut_long_shots_every_max_clip_s_while_streaming():
    """hamilton at max_clip_s 2.0: its shots are cut every 2 s from their start; every clip start is
    announced on its own frame (a restart), the shot numbers tell the length splits from the cuts."""
    name = "hamilton_white_house.mp4"
    info = probe(VIDEOS / name)
    cutter, announced = ClipCutter(info.fps, max_clip_s=2.0), []
    for frame in iter_frames(VIDEOS / name, info.fps, DecodeStats()):
        if cutter.push(frame.index, frame.t_s, frame.thumbnail_bgr(160)):
            announced.append(frame.index)
    clips = cutter.clips()
    shots, _ = _shots(name)
    assert sorted({c.shot for c in clips}) == list(range(len(shots)))  # same shots as the shot detector alone
    for no, shot in enumerate(shots):
        pieces = [c for c in clips if c.shot == no]
        assert pieces[0].start_frame == shot.start_frame and pieces[-1].end_frame == shot.end_frame
        for piece in pieces[:-1]:  # a piece ends where one more frame would take it past 2 s
            assert 2.0 - 1 / info.fps < piece.end_s - piece.start_s <= 2.0 + 1e-6
        assert pieces[-1].end_s - pieces[-1].start_s <= 2.0 + 1e-6
    assert len(clips) > len(shots)
    # every clip start after the first is announced on its frame (hamilton's cuts are reported on their own frame)
    assert announced == cutter.restarts == [c.start_frame for c in clips[1:]]
    assert cutter.splits == [c.start_frame for a, c in itertools.pairwise(clips) if a.shot == c.shot]


def test_without_max_clip_s_the_clips_are_the_shots():
    cutter = ClipCutter(25.0)
    rng = np.random.default_rng(0)
    dark, bright = rng.integers(0, 30, (90, 160, 3), np.uint8), rng.integers(200, 255, (90, 160, 3), np.uint8)
    frames = [dark] * 60 + [bright] * 40
    for i, frame in enumerate(frames):
        cutter.push(i, i / 25.0, frame)
    clips = cutter.clips()
    assert [(c.start_frame, c.end_frame, c.shot) for c in clips] == [(0, 60, 0), (60, 100, 1)]
    assert cutter.splits == [] and cutter.restarts == [60]


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[1, 2]",
        '{"video_id": "v", "split": true, "surprise": 1}',
        '{"video_id": "v", "split": true, "segments": [[0, 1]]}',
    ],
)
def test_a_tampered_plan_file_is_one_clear_error(tmp_path, content):
    from datakit.video.segments import Plan

    path = tmp_path / "v.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="is not a plan datakit wrote"):
        Plan.load(path)
