"""Long videos on Ray: plan their segments before the per-video stage, write their row after it.

A video longer than ``segment_min_s`` first gets a first pass as a Ray task (datakit.video.segments: shots
and pts map, stored as ``_plan/<video_id>.json``); its segments of whole shots are then work items of the
per-video stage like the other videos (pipelines.video_pool), each committed with its own marker. Once its
last segment is in, the driver writes the video's ``videos`` row and marker (:func:`finish_split_video`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import ray

from datakit.config import BuildConfig
from datakit.store import RunDir
from datakit.video.decode import VideoError, probe
from datakit.video.discover import SourceFile
from datakit.video.rows import probe_columns, videos_row, videos_table
from datakit.video.segments import Plan, first_pass

__all__ = ["finish_split_video", "plan_long_videos"]


def plan_long_videos(
    cfg: BuildConfig, run: RunDir, todo: list[SourceFile], timings: dict
) -> tuple[dict[str, Plan], dict[str, str]]:
    """The plans of the long videos to split (loaded from an earlier run, else made by a first pass on Ray),
    and why a long video is not split (it then runs as one item). Adds the first passes' seconds to
    ``timings``."""
    plans: dict[str, Plan] = {}
    notes: dict[str, str] = {}
    needed: list[SourceFile] = []
    for s in todo:
        path = run.plan_path(s.video_id)
        if path.exists():  # an earlier (killed) run's plan: its segment markers refer to it
            _file_plan(s.video_id, Plan.load(path, with_pts=False), plans, notes)
        elif _is_long(s, cfg):
            needed.append(s)
    if needed:
        t0 = time.perf_counter()
        for plan in _first_passes(cfg, needed):
            plan.save(run.plan_path(plan.video_id))
            if plan.split:
                plan.pts = []  # the workers read it from the run folder
            _file_plan(plan.video_id, plan, plans, notes)
            timings["first_pass"] = timings.get("first_pass", 0.0) + plan.seconds
        timings["first_pass_wall"] = time.perf_counter() - t0
    return plans, notes


def _is_long(src: SourceFile, cfg: BuildConfig) -> bool:
    """Whether a video is long enough to be split (a file that cannot be probed is not: the single-item
    path records why)."""
    if src.kind != "video" or not cfg.segment_min_s:
        return False
    try:
        info = probe(src.path)
    except VideoError:
        return False
    return bool(info.duration_s and info.duration_s > cfg.segment_min_s)


def _file_plan(video_id: str, plan: Plan, plans: dict[str, Plan], notes: dict[str, str]) -> None:
    if plan.split:
        plans[video_id] = plan
    else:
        notes[video_id] = f"not split: {plan.reason}"


def _first_passes(cfg: BuildConfig, videos: list[SourceFile]) -> Iterator[Plan]:
    """The first passes of ``videos``, one Ray task each, yielded as they finish."""
    task = ray.remote(num_cpus=1)(_first_pass_task)
    remaining = [task.remote(str(s.path), s.video_id, cfg) for s in videos]
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1)
        yield ray.get(ready[0])


def _first_pass_task(path: str, video_id: str, cfg: BuildConfig) -> Plan:
    """Ray task: a long video's first pass (datakit.video.segments); never raises (a failure means: not split)."""
    try:
        info = probe(path)
        plan = first_pass(path, video_id, info, cfg)
    except Exception as err:  # the single-item path then records the error properly
        return Plan(video_id, False, reason=f"first pass failed: {type(err).__name__}: {err}")
    plan.videos_row = probe_columns(info)
    return plan


def finish_split_video(run: RunDir, src: SourceFile, plan: Plan) -> None:
    """Every segment of a long video is committed: write its ``videos`` row and its marker."""
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
        "first_pass_s": plan.seconds,
    }
    run.finish_split_video(src.video_id, videos_table(row), summary)
