"""Captions (datakit.clips.captions): the qwen2.5-vl, openai and none backends through the real pipeline.

Real components only: the shipped footage decoded with PyAV, a tiny random Qwen2.5-VL built from its
config and reloaded through ``from_pretrained(local_files_only=True)`` (its text is random: the tests
check the plumbing, not the words), and a real HTTP server on 127.0.0.1 that speaks chat-completions.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datakit.clips.captions import NOT_CONFIGURED_HINT, PROMPTS
from datakit.clips.captions.openai_api import CaptionRequestError, OpenAICaptioner
from datakit.clips.captions.qwen import QwenVLCaptioner
from datakit.clips.frames import ClipSpan, frame_indices, sample_clip_frames
from datakit.video.decode import probe
from pipelines.run_info import BuildSummary
from tests.conftest import MODELS, ROOT, VIDEOS, build_in_subprocess, run_datakit
from tests.datakit.clips.captions_helpers import ChatServer, make_tiny_qwen_vl, request_images, request_text

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded (the Ray workers inherit it)

#: three small shipped videos of different sizes (the chat server tells them apart by frame width)
SUBSET = ("single_face.mp4", "cisco_two_people.mp4", "carphone_qcif.mp4")
PIXELS = 640 * 360  # large enough that no frame is shrunk: frame width = video width


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    return make_tiny_qwen_vl(tmp_path_factory.mktemp("models") / "tiny-qwen2.5-vl")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A build of SUBSET without a captioner: (source folder, run folder, summary). Tests copy the run."""
    root = tmp_path_factory.mktemp("captions")
    src = root / "src"
    src.mkdir()
    for name in SUBSET:
        shutil.copy(VIDEOS / name, src / name)
    out = root / "run"
    summary = build_in_subprocess(src=src, out=out, models_dir=MODELS, workers=2)
    return src, out, summary


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _kept(run: Path) -> list[str]:
    clips = pq.read_table(run / "clips")
    return sorted(clips.filter(pc.is_null(clips["drop_reason"]))["clip_id"].to_pylist())


def _stage_rows(run: Path) -> list[dict]:
    folder = run / "_stage" / "captions"
    return pq.read_table(folder).to_pylist() if folder.is_dir() and any(folder.glob("*.parquet")) else []


def _caption_errors(run: Path) -> list[dict]:
    return [r for r in pq.read_table(run / "errors").to_pylist() if r["stage"] == "caption"]


def _real_clip(name: str, count: int = 4):
    """Frames of the first second of a shipped video, decoded for real."""
    from datakit.clips.captions.base import ClipFrames

    info = probe(VIDEOS / name)
    end = min(int(info.fps), info.num_frames_hint or 8, 30)
    span = ClipSpan(name, 0, end, 0.0, end / info.fps)
    frames = sample_clip_frames(VIDEOS / name, [span], count, PIXELS)[name]
    return ClipFrames(name, frames, len(frames) / span.end_s, 0.0, span.end_s)


# --- frames ---------------------------------------------------------------------------------------------


def test_frames_are_spread_over_the_clip_and_shrunk_to_the_budget():
    assert frame_indices(10, 20, 4) == [11, 13, 16, 18]
    assert frame_indices(0, 3, 8) == [0, 1, 2]  # never more frames than the clip has
    spans = [ClipSpan("a", 0, 30, 0, 1), ClipSpan("b", 40, 70, 1.3, 2.3)]
    out = sample_clip_frames(VIDEOS / "single_face.mp4", spans, 3, 160 * 90)
    assert [len(out["a"]), len(out["b"])] == [3, 3]
    assert all(f.size == (160, 90) for f in out["a"] + out["b"])
    assert out["a"][0].tobytes() != out["b"][0].tobytes()
    past_end = sample_clip_frames(VIDEOS / "single_face.mp4", [ClipSpan("c", 500, 600, 20, 24)], 3, PIXELS)
    assert "MissingFrames" in repr(past_end["c"].error_type)


# --- qwen2.5-vl -----------------------------------------------------------------------------------------


def test_tiny_qwen_captions_a_batch_of_real_clips(tiny_qwen):
    captioner = QwenVLCaptioner(tiny_qwen, max_pixels=64 * 64, max_new_tokens=6)
    assert (captioner.model, captioner.prompt_version, captioner.device) == ("tiny-qwen2.5-vl", "v1", "cpu")
    assert type(captioner.net).__name__ == "Qwen2_5_VLForConditionalGeneration"
    texts = captioner.caption([_real_clip("single_face.mp4"), _real_clip("cisco_two_people.mp4", 3)])
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)


def test_qwen3_vl_checkpoints_load_through_the_same_backend(tmp_path):
    folder = make_tiny_qwen_vl(tmp_path / "tiny-qwen3-vl", family="qwen3_vl")
    captioner = QwenVLCaptioner(folder, max_pixels=64 * 64, max_new_tokens=4)
    assert type(captioner.net).__name__ == "Qwen3VLForConditionalGeneration"
    texts = captioner.caption([_real_clip("zhling_720p.mp4"), _real_clip("single_face.mp4", 2)])
    assert len(texts) == 2 and all(texts)


def test_qwen_build_captions_each_kept_clip_once_and_resume_adds_none(base_run, tiny_qwen, tmp_path):
    src, base, _ = base_run
    run = _copy(base, tmp_path)
    settings = dict(
        src=src,
        out=run,
        models_dir=MODELS,
        workers=2,
        captioner="qwen2.5-vl",
        caption_model_dir=tiny_qwen,
        caption_frames=4,
        caption_max_pixels=64 * 64,
        caption_max_new_tokens=6,
        caption_batch_size=2,
    )
    # resuming a finished run with a captioner: the caption settings do not block the resume
    summary = build_in_subprocess(**settings)
    kept = _kept(run)
    assert kept, "the subset must keep some clips"
    assert summary["captions"]["captioned"] == len(kept) and summary["captions"]["failed"] == 0
    assert "captioned now" in BuildSummary(**summary).format()

    clips = pq.read_table(run / "clips").to_pylist()
    for clip in clips:
        if clip["clip_id"] in kept:
            assert clip["caption"] and clip["caption_model"] == "tiny-qwen2.5-vl"
            assert clip["caption_prompt_version"] == "v1"
        else:
            assert clip["caption"] is None  # dropped clips are not captioned
    by_clip = {c["clip_id"]: c["caption"] for c in clips}
    samples = pq.read_table(run / "samples").to_pylist()
    assert samples and all(s["caption"] == by_clip[s["clip_id"]] for s in samples)
    rows = _stage_rows(run)
    assert sorted(r["clip_id"] for r in rows) == kept  # one model call per kept clip

    again = build_in_subprocess(**settings)  # resume: nothing left to caption
    assert again["captions"]["captioned"] == 0 and again["captions"]["already"] == len(kept)
    result = run_datakit(
        "caption", "--manifests", str(run), "--captioner", "qwen2.5-vl", "--caption-model-dir", str(tiny_qwen)
    )
    assert result.returncode == 0, result.stderr
    assert f"0 captioned now, {len(kept)} already" in result.stdout
    assert len(_stage_rows(run)) == len(kept)
    assert pq.read_table(run / "clips").to_pylist() == clips  # same captions after the clip pass again


# --- openai ---------------------------------------------------------------------------------------------


def _width(body: dict) -> int:
    return Image.open(io.BytesIO(request_images(body)[0])).size[0]


def test_openai_stage_retries_a_500_then_records_an_error_and_goes_on(base_run, tmp_path):
    base = base_run[1]
    run = _copy(base, tmp_path)
    kept = _kept(run)
    clips = pq.read_table(run / "clips")
    videos = {r["video_id"]: r for r in pq.read_table(run / "videos").to_pylist()}
    width_of = {c["clip_id"]: videos[c["video_id"]]["width"] for c in clips.to_pylist()}
    bad_width = width_of[kept[0]]
    bad = sorted(c for c in kept if width_of[c] == bad_width)
    assert len(bad) < len(kept), "the subset must keep clips of two videos"

    def flaky(body):
        assert PROMPTS["v1"] in request_text(body) and body["model"] == "qwen-vl-served"
        return ("error", 500) if _width(body) == bad_width else ("ok", f"A person, {_width(body)} px wide.")

    args = [
        "caption",
        "--manifests",
        str(run),
        "--captioner",
        "openai",
        "--caption-api-model",
        "qwen-vl-served",
        "--caption-frames",
        "2",
        "--caption-max-pixels",
        str(PIXELS),
        "--caption-retries",
        "2",
        "--caption-retry-backoff-s",
        "0.05",
        "--caption-concurrency",
        "2",
        "--quiet",
    ]
    env_key = {"OPENAI_API_KEY": "sk-test"}
    with ChatServer(flaky) as server:
        os.environ.update(env_key)
        try:
            result = run_datakit(*args, "--caption-base-url", server.url)
        finally:
            os.environ.pop("OPENAI_API_KEY")
    assert result.returncode == 0, result.stderr
    good = len(kept) - len(bad)
    assert f"{good} captioned now, 0 already, {len(bad)} failed" in result.stdout
    per_bad = [r for r in server.requests if _width(r["body"]) == bad_width]
    assert len(per_bad) == 3 * len(bad)  # first try + 2 retries each
    assert all(r["auth"] == "Bearer sk-test" for r in server.requests)
    assert all(len(request_images(r["body"])) == 2 for r in server.requests)
    errors = _caption_errors(run)
    assert sorted(e["item"] for e in errors) == bad
    assert all("500" in e["message"] for e in errors)
    captions = {c["clip_id"]: c for c in pq.read_table(run / "clips").to_pylist()}
    for clip_id in kept:
        c = captions[clip_id]
        if clip_id in bad:
            assert c["caption"] is None
        else:
            assert c["caption"] == f"A person, {width_of[clip_id]} px wide." and c["caption_model"] == "qwen-vl-served"

    # the server recovers: only the failed clips are asked again, and their error rows go away
    with ChatServer(lambda body: ("ok", "Recovered.")) as server:
        result = run_datakit(*args, "--caption-base-url", server.url)
    assert result.returncode == 0, result.stderr
    assert f"{len(bad)} captioned now, {good} already, 0 failed" in result.stdout
    assert len(server.requests) == len(bad)
    assert _caption_errors(run) == []
    assert sorted(r["clip_id"] for r in _stage_rows(run)) == kept


def test_killed_caption_run_resumes_without_captioning_a_clip_twice(base_run, tmp_path):
    run = _copy(base_run[1], tmp_path)
    kept = _kept(run)
    assert len(kept) >= 2
    args = [
        "caption",
        "--manifests",
        str(run),
        "--captioner",
        "openai",
        "--caption-api-model",
        "m",
        "--caption-frames",
        "1",
        "--caption-batch-size",
        "1",
        "--caption-concurrency",
        "1",
        "--quiet",
    ]
    lock = threading.Lock()

    def first_only(body):
        with lock:
            first = len(server.requests) == 1
        return ("ok", "First.") if first else ("sleep", 20)  # every later clip hangs until the kill

    with ChatServer(first_only) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "datakit.cli", *args, "--caption-base-url", server.url],
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 180
        while time.time() < deadline and (len(server.requests) < 2 or not _stage_rows(run)):
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait()
    assert [r["caption"] for r in _stage_rows(run)] == ["First."]

    with ChatServer(lambda body: ("ok", "Later.")) as server:
        result = run_datakit(*args, "--caption-base-url", server.url)
    assert result.returncode == 0, result.stderr
    assert f"{len(kept) - 1} captioned now, 1 already, 0 failed" in result.stdout
    assert len(server.requests) == len(kept) - 1  # the clip captioned before the kill was not asked again
    rows = _stage_rows(run)
    assert sorted(r["clip_id"] for r in rows) == kept  # none lost, none twice
    assert sorted(c["caption"] for c in pq.read_table(run / "clips").to_pylist() if c["clip_id"] in kept) == sorted(
        ["First."] + ["Later."] * (len(kept) - 1)
    )


def test_openai_timeout_is_retried_then_fails_that_clip_alone():
    clip = _real_clip("single_face.mp4", 2)
    state = {"calls": 0}

    def slow_first(body):
        state["calls"] += 1
        return ("sleep", 1.5) if state["calls"] == 1 else ("ok", "A man facing the camera.")

    with ChatServer(slow_first) as server:
        captioner = OpenAICaptioner(server.url, "m", timeout_s=0.3, retries=1, backoff_s=0.01)
        assert captioner.caption([clip]) == ["A man facing the camera."]  # timed out once, then answered

    with ChatServer(lambda body: ("sleep", 1.5)) as server:
        captioner = OpenAICaptioner(server.url, "m", timeout_s=0.3, retries=1, backoff_s=0.01, concurrency=2)
        out = captioner.caption_each([clip, clip])
        assert len(server.requests) == 4  # two clips, each tried twice
    assert all(isinstance(o, CaptionRequestError) and "within 0.3 s" in str(o) for o in out)


def test_openai_client_error_is_not_retried():
    with ChatServer(lambda body: ("error", 400)) as server:
        captioner = OpenAICaptioner(server.url, "m", retries=3, backoff_s=0.01)
        with pytest.raises(CaptionRequestError, match="HTTP 400"):
            captioner.caption([_real_clip("cisco_two_people.mp4", 2)])
        assert len(server.requests) == 1


# --- none -----------------------------------------------------------------------------------------------


def test_no_captioner_leaves_captions_null_and_says_how_to_set_one(base_run, tmp_path):
    _, base, summary = base_run
    assert summary["captions"]["captioner"] == "none"
    assert NOT_CONFIGURED_HINT in BuildSummary(**summary).format()
    clips = pq.read_table(base / "clips")
    assert clips.num_rows and clips["caption"].null_count == clips.num_rows
    assert clips["caption_model"].null_count == clips.num_rows
    samples = pq.read_table(base / "samples")
    assert samples["caption"].null_count == samples.num_rows
    assert not (base / "_stage" / "captions").exists()

    run = _copy(base, tmp_path)
    result = run_datakit("caption", "--manifests", str(run))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--captioner qwen2.5-vl --caption-model-dir" in result.stderr


def test_caption_settings_errors_name_the_flag(base_run, tmp_path):
    run = _copy(base_run[1], tmp_path)
    result = run_datakit("caption", "--manifests", str(run), "--captioner", "qwen2.5-vl")
    assert result.returncode == 1 and "--caption-model-dir" in result.stderr
    result = run_datakit("caption", "--manifests", str(run), "--captioner", "openai")
    assert result.returncode == 1 and "--caption-base-url" in result.stderr
    result = run_datakit("caption", "--manifests", str(tmp_path / "nope"), "--captioner", "openai")
    assert result.returncode == 1 and "run.json" in result.stderr
    assert json.loads((run / "run.json").read_text())["config"]["captioner"] == "none"


def test_caption_help_explains_backends_and_resume():
    result = run_datakit("caption", "--help")
    assert result.returncode == 0
    for text in ("--manifests", "--captioner", "--caption-model-dir", "--caption-base-url", "qwen2.5-vl", "vLLM"):
        assert text in result.stdout
    assert "resumes" in result.stdout and "errors" in result.stdout
    build = run_datakit("build", "--help")
    assert "--captioner" in build.stdout and "--caption-model-dir" in build.stdout
