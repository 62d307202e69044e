"""The per-clip stage base (datakit.clips.base) and the stage order of a build (datakit.passes.runner),
without models or Ray: a stage that measures a frame's mean level stands in for a captioner, and plain
functions stand in for the executor's caption and score stages. The clips are the shipped run's."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datakit import schema
from datakit.clips.base import ClipStage, kept_clips
from datakit.clips.captions.base import caption_model_name
from datakit.clips.captions.stage import CAPTION_ROWS
from datakit.clips.scores import SCORE_ROWS, scorer_name
from datakit.config import BuildConfig
from datakit.passes.runner import run_passes
from datakit.store import RunDir, write_atomic


class MeanLevel(ClipStage):
    """A stage without a model: the mean pixel value of each clip's middle frame."""

    name = "mean_level"
    error_stage = "mean_level"
    rows = pa.schema(
        [
            pa.field("clip_id", pa.string(), nullable=False),
            pa.field("level", pa.float64()),
            pa.field("made_at", pa.float64(), nullable=False),
        ]
    )
    time_column = "made_at"
    max_pixels = 64 * 64

    def of_config(self, rows: pa.Table) -> pa.Table:
        return rows

    def setup(self) -> None:
        self.batches = 0

    def producer(self) -> list[str]:
        return ["mean"]

    def compute(self, items: list[dict], frames: dict[str, list]) -> dict[str, dict | BaseException]:
        self.batches += 1
        return {str(i["clip_id"]): {"level": float(np.asarray(frames[str(i["clip_id"])][0]).mean())} for i in items}


@pytest.fixture
def run_copy(shipped_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(shipped_run, dst)
    return dst


def _stored(run: Path, stage: str) -> list[dict]:
    folder = run / "_stage" / stage
    return pq.read_table(folder).to_pylist() if folder.is_dir() and any(folder.glob("*.parquet")) else []


def test_base_commits_a_batch_records_a_failed_clip_and_resumes(run_copy):
    stage = MeanLevel(BuildConfig.from_run(run_copy))
    kept = kept_clips(RunDir(run_copy).read("clips", schema.CLIPS))
    items, already = stage.pending(kept)
    assert already == 0 and len(items) == kept.num_rows >= 3
    assert items == sorted(items, key=lambda r: (r["video_path"], r["start_frame"]))  # each video decoded once
    broken = {**items[0], "video_path": str(run_copy / "missing.mp4")}
    out = stage.process([broken, *items[1:]])
    assert out["status"].count("failed") == 1 and out["status"].count("ok") == len(items) - 1
    assert stage.batches == 1  # one model call for the decodable clips
    assert sorted(r["clip_id"] for r in _stored(run_copy, "mean_level")) == sorted(i["clip_id"] for i in items[1:])
    error_file = stage._error_path(broken["clip_id"])  # named by a hash of the clip id, inside errors/
    assert error_file.parent == run_copy / "errors" and broken["clip_id"] not in error_file.name
    error = pq.read_table(error_file).to_pylist()[0]
    assert (error["stage"], error["item"], error["video_id"]) == ("mean_level", broken["clip_id"], broken["video_id"])

    again, already = stage.pending(kept)  # resume: only the failed clip is left
    assert [i["clip_id"] for i in again] == [broken["clip_id"]] and already == len(items) - 1
    columns = {k: np.array([again[0][k]], dtype=object) for k in again[0]}  # Ray Data's columnar batch
    assert stage(columns)["status"] == ["ok"]
    assert not error_file.exists()  # success clears it
    assert stage.pending(kept) == ([], len(items))


def test_stage_order_captions_the_cheap_kept_clips_then_scores_then_filters_and_writes_once(run_copy, monkeypatch):
    cfg = BuildConfig.from_run(
        run_copy,
        captioner="openai",
        caption_api_model="served",
        caption_base_url="http://127.0.0.1:9/v1",
        clip_model_dir=Path("/models/tiny-clip"),  # named only: no model runs in this test
        filter_min_aesthetic=5.0,
    )
    run = RunDir(run_copy)
    cheap_dropped = {c["clip_id"] for c in run.read("clips", schema.CLIPS).to_pylist() if c["drop_reason"]}
    assert cheap_dropped, "the shipped run drops clips with the cheap filters"
    calls: list[str] = []

    def captions(kept: pa.Table) -> str:
        calls.append("captions")
        assert not cheap_dropped & set(kept["clip_id"].to_pylist())  # the models never see a dropped clip
        row = {"caption": "A person.", "caption_model": caption_model_name(cfg), "caption_prompt_version": "v1"}
        rows = [
            {"clip_id": c, **row, "captioner": "openai", "captioned_at": time.time()}
            for c in kept["clip_id"].to_pylist()
        ]
        write_atomic(pa.Table.from_pylist(rows, schema=CAPTION_ROWS), run_copy / "_stage" / "captions" / "a.parquet")
        return "caption summary"

    def scores(kept: pa.Table) -> str:
        calls.append("clip_scores")
        assert set(kept["caption"].to_pylist()) == {"A person."}  # the scores see this build's captions
        rows = [
            {"clip_id": c, "scorer": scorer_name(cfg), "caption": "A person.", "aesthetic_score": float(i % 2) * 9,
             "clip_score": 0.3, "scored_at": time.time()}
            for i, c in enumerate(kept["clip_id"].to_pylist())
        ]  # fmt: skip
        write_atomic(pa.Table.from_pylist(rows, schema=SCORE_ROWS), run_copy / "_stage" / "clip_scores" / "a.parquet")
        return "score summary"

    writes: list[str] = []
    replace_table = RunDir.replace_table
    monkeypatch.setattr(
        RunDir, "replace_table", lambda self, name, t: (writes.append(name), replace_table(self, name, t))
    )
    result = run_passes(run, cfg, captions=captions, scores=scores)
    assert calls == ["captions", "clip_scores"] and sorted(writes) == ["clips", "samples"]
    assert result.steps == {"captions": "caption summary", "clip_scores": "score summary"}
    clips = run.read("clips", schema.CLIPS).to_pylist()
    low = {c["clip_id"] for c in clips if c["aesthetic_score"] == 0.0}
    assert low and {c["clip_id"] for c in clips if c["drop_reason"] == "low_aesthetic"} == low
    assert {c["clip_id"] for c in clips if c["drop_reason"] not in (None, "low_aesthetic")} == cheap_dropped
    assert all(c["clip_score"] == pytest.approx(0.3) for c in clips if c["clip_id"] not in cheap_dropped)
    samples = set(run.read("samples", schema.SAMPLES)["clip_id"].to_pylist())
    assert samples and not samples & (low | cheap_dropped)
