"""Discovery never opens what is not a regular file: a FIFO (which would block a read forever), a socket or a
device, directly or through a symbolic link, is an ``unreadable`` file with its reason, and a build goes on."""

from __future__ import annotations

import os
import socket

import pyarrow.parquet as pq
import pytest

from datakit.video.discover import discover
from tests.conftest import MODELS, VIDEOS, run_datakit


@pytest.mark.timeout(60)  # a regression blocks in open(): fail, do not hang
def test_fifos_sockets_and_links_to_them_are_reported_without_being_opened(tmp_path):
    (tmp_path / "real.mp4").symlink_to(VIDEOS / "single_face.mp4")
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "deep").mkdir()
    os.mkfifo(tmp_path / "deep" / "plain_fifo")  # no video name: still reported, it may be a video's pipe
    (tmp_path / "link.mov").symlink_to(tmp_path / "deep" / "plain_fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "control.sock"))
        found = {f.rel_path: f for f in discover(tmp_path)}
    assert found["real.mp4"].kind == "video" and found["real.mp4"].video_id.startswith("v_")
    problems = {rel: (f.kind, f.problem) for rel, f in found.items() if rel != "real.mp4"}
    assert problems == {
        "pipe.mp4": ("unreadable", "NotARegularFile: not a regular file (fifo)"),
        "deep/plain_fifo": ("unreadable", "NotARegularFile: not a regular file (fifo)"),
        "link.mov": ("unreadable", "NotARegularFile: not a regular file (symbolic link to a fifo)"),
        "control.sock": ("unreadable", "NotARegularFile: not a regular file (socket)"),
    }
    assert all(f.video_id.startswith("p_") and f.size_bytes == -1 for rel, f in found.items() if rel != "real.mp4")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_build_with_a_fifo_in_the_source_finishes_with_an_errors_row(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "single_face.mp4").symlink_to(VIDEOS / "single_face.mp4")
    os.mkfifo(src / "stream.mp4")
    out = tmp_path / "run"
    result = run_datakit(
        "build", "--src", str(src), "--out", str(out), "--models-dir", str(MODELS), "--workers", "1", "--quiet",
        timeout=540,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    errors = pq.read_table(out / "errors").to_pylist()
    fifo = [e for e in errors if "not a regular file (fifo)" in e["message"]]
    assert len(fifo) == 1 and fifo[0]["stage"] == "discover" and fifo[0]["error_type"] == "NotARegularFile", errors
    videos = {v["path"]: v["status"] for v in pq.read_table(out / "videos").to_pylist()}
    assert videos["stream.mp4"] == "failed" and videos["single_face.mp4"] != "failed"
