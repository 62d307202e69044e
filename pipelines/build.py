"""``datakit build``: the stages of one curation run, in order, and its run.json.

1. discover the source files, skip byte-identical copies (each gets a ``duplicate`` videos row);
2. the per-video stage on Ray (pipelines.video_pool; long videos in segments, pipelines.long_videos): every
   video becomes per-video Parquet files plus a completion marker (datakit.store);
3. the global passes, which need every video: identities across videos, reference views, clip filters,
   captions, model scores, training samples.

A killed run resumes from the markers; ``overwrite`` starts over; a run made with other output settings is
refused (pipelines.resume).
"""

from __future__ import annotations

import time

from datakit.clips.captions.base import validate as validate_captioner
from datakit.config import BuildConfig
from datakit.store import RunDir, write_atomic
from datakit.video.discover import SourceFile, dedupe, discover, path_id
from datakit.video.rows import videos_row, videos_table
from pipelines.clip_stages import run_stages
from pipelines.resume import RunConflictError, check_resume
from pipelines.run_info import BuildSummary, run_record
from pipelines.video_pool import face_stack, run_videos, worker_config

__all__ = ["RunConflictError", "build"]  # RunConflictError: what a caller of build() catches


def build(cfg: BuildConfig, *, progress: bool = True) -> BuildSummary:
    """Run the whole curation: discover, per-video stage on Ray, global passes; returns the summary."""
    started = time.time()
    run = RunDir(cfg.out)
    stack = face_stack(cfg)
    check_resume(cfg, run, stack)
    validate_captioner(cfg)  # a wrong caption setting fails now, not after the face models ran
    run.root.mkdir(parents=True, exist_ok=True)
    run.clean_temporaries()
    unique, duplicates = dedupe(discover(cfg.src))
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
    )
    run.write_record(run_record(cfg, stack, started, state="finished", summary=summary))
    return summary


def _record_duplicates(run: RunDir, duplicates: list[tuple[SourceFile, SourceFile]]) -> None:
    """Byte-identical copies get a ``duplicate`` videos row naming the copy that was processed.

    The row's id is derived from the copy's path (like an unreadable file's), not its content, so
    ``video_id`` stays unique in ``videos`` and joins on it never count a video twice.
    """
    for dup, kept in duplicates:
        error = f"same content as {kept.rel_path} (video_id {kept.video_id})"
        row = videos_row(dup, "duplicate", error=error, video_id=path_id(dup.rel_path))
        write_atomic(videos_table(row), run.root / "videos" / f"{row['video_id']}.parquet")
