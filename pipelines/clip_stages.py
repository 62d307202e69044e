"""The stage order of a build on Ray, and the whole-run commands that re-run part of it.

:func:`run_stages` is :func:`datakit.passes.runner.run_passes` (identity passes -> cheap clip filters ->
captions -> model scores -> model-based filters -> samples) with its two per-clip stages, captions and
open_clip scores, run on Ray Data actor pools (:mod:`pipelines.pools`). ``datakit caption``
(:func:`caption_run`) and ``datakit filter`` (:func:`refilter`) run the same order on a finished run,
starting from its tables. What a per-clip stage computes, and how it commits, fails and resumes, is
:mod:`datakit.clips` (one base, :class:`datakit.clips.base.ClipStage`); this module only runs it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
from tqdm import tqdm

from datakit import schema
from datakit.clips.base import ClipStage
from datakit.clips.captions.base import NOT_CONFIGURED_HINT, CaptionerConfigError, caption_model_name, validate
from datakit.clips.captions.stage import CaptionStage, CaptionSummary
from datakit.clips.filters import (
    FILTER_FIELDS,
    FilterSummary,
    drop_counts,
    parse_threshold,
    read_filter_config,
    thresholds,
)
from datakit.clips.scores import ScoreStage, ScoreSummary, scorer_name
from datakit.config import BuildConfig
from datakit.faces import FaceStack
from datakit.passes.runner import run_passes
from datakit.store import RunDir
from pipelines.pools import actor_pool, cluster_gpus


@dataclass(slots=True)
class StageResults:
    """What :func:`run_stages` did: seconds per global pass, and the two per-clip stages' summaries."""

    seconds: dict[str, float]
    captions: CaptionSummary
    scores: ScoreSummary

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Seconds of the per-clip stages that are configured (run.json: ``captions``, ``clip_scores``)."""
        out = {"captions": self.captions.seconds} if self.captions.configured else {}
        return out | ({"clip_scores": self.scores.seconds} if self.scores.scorer else {})


def run_stages(
    run: RunDir,
    cfg: BuildConfig,
    stack: FaceStack | None = None,
    *,
    score: bool = True,
    progress: bool = False,
) -> StageResults:
    """Every global pass and per-clip stage of a build, in its one order; ``clips`` and ``samples`` are
    written once, at the end. ``stack`` None keeps the run's identity tables; ``score`` False leaves the
    open_clip scores as stored (``datakit caption``)."""
    result = run_passes(
        run,
        cfg,
        stack,
        captions=partial(caption_clips, cfg, progress=progress),
        scores=partial(score_clips, cfg, progress=progress) if score else None,
    )
    return StageResults(result.seconds, result.steps["captions"], result.steps.get("clip_scores", ScoreSummary()))


class _Counts(NamedTuple):
    done: int  #: computed now
    already: int  #: kept clips done before this run
    failed: int  #: failed now (an errors row each)
    seconds: float


def _run_stage(stage: ClipStage, kept: pa.Table, *, progress: bool) -> _Counts:
    """Run one resumable per-clip stage over the pending ones of the ``kept`` clips on an actor pool."""
    started = time.perf_counter()
    items, already = stage.pending(kept)
    done = failed = 0
    if items:
        need = stage.resources(cluster_gpus(stage.cfg))
        bar = tqdm(total=len(items), desc=stage.name.replace("_", " "), unit="clip", disable=not progress)
        for row in actor_pool(type(stage), stage.cfg, items, **asdict(need)).iter_rows():
            bar.update(1)
            if row["status"] == "ok":
                done += 1
            else:
                failed += 1
        bar.close()
    return _Counts(done, already, failed, round(time.perf_counter() - started, 3))


def caption_clips(cfg: BuildConfig, kept: pa.Table, *, progress: bool = False) -> CaptionSummary:
    """Caption the ``kept`` clips not yet captioned by the configured captioner (none: a no-op)."""
    validate(cfg)
    if cfg.captioner == "none":
        return CaptionSummary(captioner="none")
    counts = _run_stage(CaptionStage(cfg), kept, progress=progress)
    return CaptionSummary(
        captioner=cfg.captioner,
        model=caption_model_name(cfg),
        prompt_version=cfg.caption_prompt_version,
        kept_clips=kept.num_rows,
        already=counts.already,
        captioned=counts.done,
        failed=counts.failed,
        seconds=counts.seconds,
    )


def score_clips(cfg: BuildConfig, kept: pa.Table, *, progress: bool = False) -> ScoreSummary:
    """Score the ``kept`` clips not yet scored against their current caption (no scorer: a no-op)."""
    scorer = scorer_name(cfg)
    if scorer is None:
        return ScoreSummary()
    counts = _run_stage(ScoreStage(cfg), kept, progress=progress)
    return ScoreSummary(
        scorer, scored=counts.done, already=counts.already, failed=counts.failed, seconds=counts.seconds
    )


def caption_run(root: str | Path, *, progress: bool = False, **overrides: object) -> CaptionSummary:
    """``datakit caption``: caption an existing run, then finish its stage order (``clips``, ``samples``).

    The settings are the run's own (run.json) with ``overrides`` (non-None) applied. The face models and
    the open_clip scorer do not run: the identity tables and stored scores are the run's.
    """
    run = RunDir.open(root, verify=False)
    with run.lock("caption"):
        run.clean_temporaries()  # a .datakit-old-<table> of a killed swap is put back before the check
        run.verify()
        cfg = BuildConfig.from_run(root, **overrides)
        validate(cfg)
        if cfg.captioner == "none":
            raise CaptionerConfigError(NOT_CONFIGURED_HINT)
        if not (run.root / "clips").is_dir():
            raise FileNotFoundError(f"{run.root}: no clips table yet; run `datakit build` on it first")
        summary = run_stages(run, cfg, score=False, progress=progress).captions
        run.update_record(captions={**summary.to_dict(), "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return summary


def refilter(run_dir: str | Path, config: str | Path | None = None, overrides: dict | None = None) -> FilterSummary:
    """Re-apply the clip filters to a finished run: its stage order without any model (no Ray either).

    The run's config comes from its ``run.json``; ``config`` (a JSON/TOML file of ``filter_*`` fields)
    and then ``overrides`` change it. Only filter fields may change (others need ``datakit build``). The
    new values are written back into ``run.json`` so that a later resumed build agrees with the run.
    """
    run = RunDir.open(run_dir, verify=False)
    with run.lock("filter"):
        run.clean_temporaries()  # a .datakit-old-<table> of a killed swap is put back before the check
        run.verify()
        return _refilter(run, config, overrides)


def _refilter(run: RunDir, config: str | Path | None, overrides: dict | None) -> FilterSummary:
    record = run.record()
    if record.get("state") != "finished":
        raise ValueError(f"{run.root}: the build is not finished (state {record.get('state')!r}); resume it first")
    changes = dict(read_filter_config(config)) if config else {}
    changes.update(overrides or {})
    unknown = sorted(set(changes) - set(FILTER_FIELDS))
    if unknown:
        raise ValueError(f"not clip filter settings: {unknown}; known: {list(FILTER_FIELDS)}")
    changes = {k: parse_threshold(k, v) for k, v in changes.items()}
    cfg = replace(BuildConfig.from_run(run.root), **changes)
    samples_before = run.read("samples", schema.SAMPLES).num_rows
    run_passes(run, cfg)
    clips = run.read("clips", schema.CLIPS)
    dropped = drop_counts(clips)
    summary = FilterSummary(
        run=str(run.root),
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
    run.write_record(record)
    return summary
