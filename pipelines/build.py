"""``datakit build``: the stages of one curation run, in order, and its run.json.

1. discover the source files, skip byte-identical copies (each gets a ``duplicate`` videos row);
2. the per-video stage on Ray (pipelines.video_pool; long videos in segments, pipelines.long_videos): every
   video becomes per-video Parquet files plus a completion marker (datakit.store);
3. the global passes, which need every video: identities across videos, reference views, clip filters,
   captions, model scores, training samples.

A killed run resumes from the markers (a marker whose files are missing or torn is void: that video is
redone); ``overwrite`` starts over; a run made with other output settings or another source is refused
(pipelines.resume), unless ``reconcile_src`` removes the videos the new source no longer holds. The build
holds the run's lock (``RunDir.lock``) from start to end, and writes only into a new or empty folder or an
earlier run (``RunDir.check_out_folder``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from datakit.clips.captions.base import validate as validate_captioner
from datakit.config import BuildConfig
from datakit.faces import FaceStack
from datakit.store import RUN_ENTRIES, RunDir, write_atomic
from datakit.video.discover import SourceFile, dedupe, discover, path_id
from datakit.video.rows import videos_row, videos_table
from pipelines.clip_stages import run_stages
from pipelines.resume import RunConflictError, check_resume, reconcile_source
from pipelines.run_info import BuildSummary, run_record
from pipelines.video_pool import face_stack, run_videos, worker_config

__all__ = ["RunConflictError", "build"]  # RunConflictError: what a caller of build() catches

log = logging.getLogger(__name__)


def build(cfg: BuildConfig, *, progress: bool = True, reconcile_src: bool = False) -> BuildSummary:
    """Run the whole curation: discover, per-video stage on Ray, global passes; returns the summary.

    ``reconcile_src``: resume a run made from another ``--src``, removing from it the videos that the new
    source does not hold (without it, another source is refused with :class:`RunConflictError`)."""
    started = time.time()
    run = RunDir(cfg.out)
    run.check_out_folder()
    _check_src_outside_run(cfg)
    stack = face_stack(cfg)
    with run.lock("build"):
        return _build(cfg, run, stack, started, progress=progress, reconcile_src=reconcile_src)


def _build(
    cfg: BuildConfig, run: RunDir, stack: FaceStack, started: float, *, progress: bool, reconcile_src: bool
) -> BuildSummary:
    check_resume(cfg, run, stack, reconcile_src=reconcile_src)
    validate_captioner(cfg)  # a wrong caption setting fails now, not after the face models ran
    run.clean_temporaries()
    redone = _void_torn(run)
    unique, duplicates = dedupe(discover(cfg.src))
    removed = []
    if reconcile_src:
        keep = {s.video_id for s in unique} | {path_id(dup.rel_path) for dup, _ in duplicates}
        removed = reconcile_source(run, keep)
        if removed:
            log.warning("%d videos removed from the run: no longer in --src %s", len(removed), cfg.src)
    done = run.done_ids()
    todo = [s for s in unique if s.video_id not in done]
    run.write_record(run_record(cfg, stack, started, state="running"))
    workers_busy: dict[str, dict] = {}
    timings = run_videos(
        worker_config(cfg, stack),
        todo,
        progress,
        total=len(unique),
        already=len(unique) - len(todo),
        workers_busy=workers_busy,
    )
    _record_duplicates(run, duplicates)
    t_global = time.perf_counter()
    # The global passes and the per-clip stages (captions, open_clip scores) in their one declared order
    # (datakit.passes.runner); `clips` and `samples` are written once.
    stages = run_stages(run, cfg, stack, progress=progress)
    global_seconds, captions = stages.seconds, stages.captions
    timings["global"] = time.perf_counter() - t_global - sum(stages.stage_seconds.values())
    timings.update(stages.stage_seconds)  # "captions" / "clip_scores", when configured
    summary = BuildSummary.from_run(
        run,
        stack,
        global_seconds,
        wall_s=time.time() - started,
        resumed=len(unique) - len(todo),
        stage_seconds=timings,
        captions=captions,
        workers=workers_busy,
        redone=redone,
        removed=len(removed),
    )
    run.write_record(run_record(cfg, stack, started, state="finished", summary=summary))
    return summary


def _check_src_outside_run(cfg: BuildConfig) -> None:
    """Refuse a source that is the run folder or lies in one of its datakit folders (which --overwrite deletes)."""
    src, out = Path(cfg.src).resolve(), Path(cfg.out).resolve()
    if src == out or any(src.is_relative_to(out / name) for name in RUN_ENTRIES):
        raise RunConflictError(f"--src {cfg.src} lies inside the run folder --out {cfg.out}: choose another --out")


def _void_torn(run: RunDir) -> dict:
    """Void the markers whose files are missing or torn (their videos are redone); what the summary says."""
    voided = run.void_torn_markers()
    if not voided:
        return {}
    videos = sorted({key.split(".")[0] for key, _ in voided})
    log.warning("%d videos redone: files missing or torn (%s)", len(videos), voided[0][1])
    return {"videos": len(videos), "example": voided[0][1]}


def _record_duplicates(run: RunDir, duplicates: list[tuple[SourceFile, SourceFile]]) -> None:
    """Byte-identical copies get a ``duplicate`` videos row naming the copy that was processed.

    The row's id is derived from the copy's path (like an unreadable file's), not its content, so
    ``video_id`` stays unique in ``videos`` and joins on it never count a video twice.
    """
    for dup, kept in duplicates:
        error = f"same content as {kept.rel_path} (video_id {kept.video_id})"
        row = videos_row(dup, "duplicate", error=error, video_id=path_id(dup.rel_path))
        write_atomic(videos_table(row), run.root / "videos" / f"{row['video_id']}.parquet")
