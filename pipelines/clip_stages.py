"""Per-clip stages over a whole run, on Ray Data actor pools: captions, open_clip scores, and the
whole-run commands that re-run one stage (``datakit caption``, ``datakit filter``).

The stage logic (pending clips, workers, commits, errors) lives in :mod:`datakit.clips`; this module only
runs it on Ray and redoes the clip pass afterwards.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import ray
from tqdm import tqdm

from datakit import schema
from datakit.clips.captions.base import NOT_CONFIGURED_HINT, CaptionerConfigError, caption_model_name, validate
from datakit.clips.captions.stage import CaptionSummary, CaptionWorker, pending_clips
from datakit.clips.filters import (
    FILTER_FIELDS,
    FilterSummary,
    drop_counts,
    parse_threshold,
    read_filter_config,
    thresholds,
)
from datakit.clips.scores import ScoreSummary, ScoreWorker, pending_score_items, scorer_name
from datakit.config import BuildConfig
from datakit.passes.runner import clip_pass
from datakit.store import RunDir, write_json_atomic
from pipelines.ray_runtime import init_ray


def _worker_class(cfg: BuildConfig) -> type[CaptionWorker]:
    return type("CaptionWorker", (CaptionWorker,), {"cfg": cfg})


def caption_clips(run: RunDir, cfg: BuildConfig, *, progress: bool = False) -> CaptionSummary:
    """Caption the kept, not yet captioned clips of ``run`` with the configured captioner."""
    started = time.perf_counter()
    validate(cfg)
    if cfg.captioner == "none":
        return CaptionSummary(captioner="none")
    summary = CaptionSummary(
        captioner=cfg.captioner, model=caption_model_name(cfg), prompt_version=cfg.caption_prompt_version
    )
    items, summary.kept_clips, summary.already = pending_clips(run, cfg)
    if items:
        for row in _run_pool(cfg, items, progress):
            if row["status"] == "ok":
                summary.captioned += 1
            else:
                summary.failed += 1
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _run_pool(cfg: BuildConfig, items: list[dict], progress: bool):
    init_ray(cfg)
    resources: dict = {"num_cpus": 1}
    size = 1
    batch = max(1, cfg.caption_batch_size)
    if cfg.captioner == "qwen2.5-vl":
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus:
            resources = {"num_gpus": 1, "num_cpus": 1}
            size = gpus
        else:  # one model on the CPU, using the node's cores (Ray would pin torch to one thread)
            threads = str(os.cpu_count() or 1)
            resources["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}}
    else:  # openai: I/O-bound, threads inside one actor; a batch should feed them all
        batch = max(batch, cfg.caption_concurrency)
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch))).map_batches(
        _worker_class(cfg),
        batch_size=batch,
        compute=ray.data.ActorPoolStrategy(size=min(size, math.ceil(len(items) / batch))),
        **resources,
    )
    bar = tqdm(total=len(items), desc="captions", unit="clip", disable=not progress)
    for row in ds.iter_rows():
        bar.update(1)
        yield row
    bar.close()


def caption_run(root: str | Path, *, progress: bool = False, **overrides: object) -> CaptionSummary:
    """``datakit caption``: caption an existing run, then redo the clip pass (``clips`` and ``samples``).

    The settings are the run's own (run.json) with ``overrides`` (non-None) applied; the face models do
    not run (the clip pass needs only the embedding width, read from run.json).
    """
    run = RunDir(root)
    cfg = BuildConfig.from_run(root, **overrides)
    validate(cfg)
    if cfg.captioner == "none":
        raise CaptionerConfigError(NOT_CONFIGURED_HINT)
    run.clean_temporaries()
    summary = caption_clips(run, cfg, progress=progress)
    clip_pass(run, cfg)
    record = json.loads((run.root / "run.json").read_text())
    record["captions"] = {**summary.to_dict(), "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(record, run.root / "run.json")
    return summary


def score_clips(run: RunDir, cfg: BuildConfig, *, progress: bool = False, batch_size: int = 16) -> ScoreSummary:
    """Score the kept clips not yet scored against their current caption; no-op without a scorer."""
    scorer = scorer_name(cfg)
    summary = ScoreSummary(scorer=scorer)
    if scorer is None:
        return summary
    started = time.perf_counter()
    items, summary.already = pending_score_items(run, cfg, scorer)
    if items:
        init_ray(cfg)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        resources = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        blocks = max(1, math.ceil(len(items) / batch_size))
        ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            type("ScoreWorker", (ScoreWorker,), {"cfg": cfg}),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=min(max(gpus, 1), blocks)),
            **resources,
        )
        bar = tqdm(total=len(items), desc="clip scores", unit="clip", disable=not progress)
        for row in ds.iter_rows():
            bar.update(1)
            if row["status"] == "ok":
                summary.scored += 1
            else:
                summary.failed += 1
        bar.close()
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def refilter(run_dir: str | Path, config: str | Path | None = None, overrides: dict | None = None) -> FilterSummary:
    """Re-apply the clip filters to a finished run: re-runs ``clip_pass`` only (no model, no embedding).

    The run's config comes from its ``run.json``; ``config`` (a JSON/TOML file of ``filter_*`` fields)
    and then ``overrides`` change it. Only filter fields may change (others need ``datakit build``). The
    new values are written back into ``run.json`` so that a later resumed build agrees with the run.
    """
    root = Path(run_dir)
    record_path = root / "run.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{root} is not a datakit run: no run.json (run `datakit build` first)")
    record = json.loads(record_path.read_text())
    if record.get("state") != "finished":
        raise ValueError(f"{root}: the build is not finished (state {record.get('state')!r}); resume it first")
    changes = dict(read_filter_config(config)) if config else {}
    changes.update(overrides or {})
    unknown = sorted(set(changes) - set(FILTER_FIELDS))
    if unknown:
        raise ValueError(f"not clip filter settings: {unknown}; known: {list(FILTER_FIELDS)}")
    changes = {k: parse_threshold(k, v) for k, v in changes.items()}
    cfg = replace(BuildConfig.from_run(root), **changes)
    run = RunDir(root)
    samples_before = run.read("samples", schema.SAMPLES).num_rows
    clip_pass(run, cfg)
    clips = run.read("clips", schema.CLIPS)
    dropped = drop_counts(clips)
    summary = FilterSummary(
        run=str(root),
        thresholds=thresholds(cfg),
        num_clips=clips.num_rows,
        kept=clips.num_rows - sum(dropped.values()),
        dropped=dropped,
        samples_before=samples_before,
        samples_after=run.read("samples", schema.SAMPLES).num_rows,
    )
    record["config"].update({k: v for k, v in cfg.to_dict().items() if k in FILTER_FIELDS})
    if isinstance(record.get("summary"), dict):
        record["summary"].update(num_samples=summary.samples_after, clips_dropped=dropped)
    write_json_atomic(record, record_path)
    return summary
