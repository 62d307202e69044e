"""Long videos on Ray: planned while the other videos run, their segments work items like any video.

A video longer than ``segment_min_s`` enters the per-video stage as one *plan* item (``segment`` =
:data:`PLAN`). A Ray Data ``flat_map`` ahead of the worker pool (:func:`plan_rows`) runs its first pass
(datakit.video.segments: clips and pts map, stored as ``_plan/<video_id>.json``) and hands the workers one
item per segment instead, or the video itself when it is not split (the row's ``note`` says why). The
first passes run beside the workers (decoding that needs no model, at most :func:`planner_concurrency`
videos at a time), and the plan items come last in the stream, so the workers take the short videos while
long ones are being planned: no worker waits for a first pass while there is other work. A first pass is
itself cut into ranges scored in parallel (:func:`first_pass_ranges`, one Ray task each), so a corpus of
one long video keeps every CPU decoding while it is planned. A plan from an earlier (killed) run is
reused; its segments' markers refer to it.

Each segment is committed with its own marker. Once a video's last segment is in, the driver writes its
``videos`` row and marker (:func:`finish_split_video`), with how many segments ran on how many workers.
"""

from __future__ import annotations

import math

import ray

from datakit.config import BuildConfig
from datakit.store import RunDir
from datakit.video.decode import VideoError, probe
from datakit.video.discover import SourceFile
from datakit.video.rows import probe_columns, videos_row, videos_table
from datakit.video.segments import Plan, first_pass

__all__ = [
    "PLAN",
    "finish_split_video",
    "first_pass_ranges",
    "is_long",
    "load_plans",
    "plan_rows",
    "planner_concurrency",
]

PLAN = -2  #: the ``segment`` of a work item that is a long video still to plan (-1: a whole video)


def load_plans(run: RunDir, todo: list[SourceFile]) -> dict[str, Plan]:
    """The plans an earlier (killed) run of this folder left (without their pts maps)."""
    plans: dict[str, Plan] = {}
    for s in todo:
        path = run.plan_path(s.video_id)
        if path.exists():
            plans[s.video_id] = Plan.load(path, with_pts=False)
    return plans


def is_long(src: SourceFile, cfg: BuildConfig) -> bool:
    """Whether a video is long enough to be split (a file that cannot be probed is not: the single-item
    path records why)."""
    if src.kind != "video" or not cfg.segment_min_s:
        return False
    try:
        info = probe(src.path)
    except VideoError:
        return False
    return bool(info.duration_s and info.duration_s > cfg.segment_min_s)


def planner_concurrency(workers: int) -> int:
    """First passes at once: one per four workers (at least one). A first pass costs ~1/6 of what the
    workers spend on the same video (BENCHMARKS.md), so this keeps the segments coming without starving the
    workers of CPU."""
    return max(1, math.ceil(workers / 4))


def first_pass_ranges(duration_s: float | None, workers: int, segment_s: float) -> int:
    """How many ranges a long video's first pass is cut into: one per worker (the workers wait for it when
    there is nothing else to do), each at least a segment long (every range decodes a keyframe interval
    before it for nothing)."""
    if not duration_s or segment_s <= 0:
        return 1
    return max(1, min(workers, math.floor(duration_s / segment_s)))


def plan_rows(row: dict, cfg: BuildConfig, workers: int = 1) -> list[dict]:
    """Ray Data ``flat_map``: a plan item becomes one work item per segment of its video (its first pass
    stored in the run folder), or the whole video when it is not split; other items pass through."""
    if row["segment"] != PLAN:
        return [row]
    run = RunDir(cfg.out)
    plan = _first_pass(row["path"], row["video_id"], cfg, workers)
    plan.save(run.plan_path(plan.video_id))
    if not plan.split:
        return [{**row, "segment": -1, "note": f"not split: {plan.reason}"}]
    return [{**row, "segment": n} for n in range(len(plan.segments))]


def _first_pass(path: str, video_id: str, cfg: BuildConfig, workers: int) -> Plan:
    """A long video's first pass, its ranges as Ray tasks; never raises (a failure means: not split, and
    the whole-video path records the error properly)."""
    try:
        info = probe(path)
        ranges = first_pass_ranges(info.duration_s, workers, cfg.segment_s)
        plan = first_pass(path, video_id, info, cfg, ranges=ranges, run=_ray_map)
    except Exception as err:
        return Plan(video_id, False, reason=f"first pass failed: {type(err).__name__}: {err}")
    plan.videos_row = probe_columns(info)
    return plan


def _ray_map(fn, args: list[tuple]) -> list:
    """``fn`` over ``args``, results in order: the first in this task, the others as Ray tasks (a fresh
    worker process costs ~1 s of imports). num_cpus=0: the workers hold the CPUs for the whole stage; a
    range runs beside them (on CPUs they leave idle while they wait for this plan)."""
    task = ray.remote(num_cpus=0)(fn)
    others = [task.remote(*a) for a in args[1:]]
    return [fn(*args[0]), *ray.get(others)]


def finish_split_video(run: RunDir, src: SourceFile, plan: Plan) -> dict:
    """Every segment of a long video is committed: write its ``videos`` row and its marker; returns the
    marker's summary (segments, the workers they ran on, first-pass seconds)."""
    segs = [run.segment_summary(src.video_id, n) for n in range(len(plan.segments))]
    errors = [s["error"] for s in segs if s.get("error")]
    num_faces = sum(s["num_faces"] for s in segs)
    status = "partial" if errors else ("no_faces" if num_faces == 0 else "ok")
    row = videos_row(
        src,
        status,
        probe=plan.videos_row,
        num_frames=plan.num_frames,
        error=errors[0] if errors else None,
        clips=plan.clip_segments(),
    )
    seconds: dict[str, float] = {}
    for s in segs:
        for k, v in s["seconds"].items():
            seconds[k] = seconds.get(k, 0.0) + v
    summary = {
        "video_id": src.video_id,
        "path": src.rel_path,
        "status": status,
        "num_frames": plan.num_frames,
        "num_sampled": sum(s["num_sampled"] for s in segs),
        "num_faces": num_faces,
        "seconds": seconds,
        "segments": len(segs),
        "workers": sorted({s["worker"] for s in segs if s.get("worker")}),
        "first_pass_s": plan.seconds,
    }
    run.finish_split_video(src.video_id, videos_table(row), summary)
    return summary
