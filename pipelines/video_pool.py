"""The per-video stage of ``datakit build`` on Ray Data: a pool of :class:`VideoWorker` actors.

Each actor loads the face stack once and turns work items into per-video Parquet files plus a completion
marker (datakit.store). A work item is a video, or one segment of a long video (pipelines.long_videos),
whose ``videos`` row the driver writes once its last segment is in. The driver streams the actors' result
rows into the progress bar and the stage's timings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import socket
import time
import traceback
from pathlib import Path

import ray
from tqdm import tqdm

from datakit.config import BuildConfig
from datakit.faces import FaceStack, build_face_stack, choose_auto_backend
from datakit.faces.model_files import resolve_models_dir
from datakit.store import RunDir
from datakit.video.decode import VideoError
from datakit.video.discover import SourceFile
from datakit.video.job import VideoOutput, failed_output, process_segment, process_video
from datakit.video.segments import Plan
from pipelines.long_videos import PLAN, finish_split_video, is_long, load_plans, plan_rows, planner_concurrency
from pipelines.pools import actor_pool
from pipelines.ray_runtime import init_ray

__all__ = ["MAX_ATTEMPTS", "VideoWorker", "face_stack", "run_videos", "worker_config"]

MAX_ATTEMPTS = 3  #: a video that killed this many workers is recorded as failed instead of tried again

#: the columns of the result row of one work item (what the driver needs for progress and run.json)
_RESULT_COLUMNS = (
    "video_id",
    "path",
    "segment",
    "status",
    "num_frames",
    "num_sampled",
    "num_faces",
    "seconds",
    "peak_rss_mb",
    "worker",
    "busy_s",
    "started",
    "ended",
)
#: one CPU per actor: keep BLAS/OpenMP pools (dlib, onnxruntime) from oversubscribing the node
_ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def face_stack(cfg: BuildConfig) -> FaceStack:
    """The face stack of a build's config (the driver's, and every worker's from :func:`worker_config`)."""
    return build_face_stack(
        cfg.backend,
        models_dir=cfg.models_dir,
        insightface_pack=cfg.insightface_pack,
        det_threshold=cfg.det_threshold,
        detect_max_side=cfg.detect_max_side,
    )


def worker_config(cfg: BuildConfig, stack: FaceStack) -> BuildConfig:
    """The config the per-video workers get: the driver's choice of stack and models folder, pinned.

    With ``auto`` and the per-user default folder, a cluster node without the files would otherwise
    fall back to dlib on its own while run.json names the driver's stack; pinned, it fails loudly.
    """
    models_dir = resolve_models_dir(cfg.models_dir)
    if cfg.backend != "auto":
        return dataclasses.replace(cfg, models_dir=models_dir)
    choice = choose_auto_backend(cfg.models_dir, cfg.insightface_pack)  # the choice the driver's stack made
    if not stack.name.startswith(choice.backend):
        raise RuntimeError(f"face stack {stack.name!r} is not the auto choice {choice.backend!r}: {choice.reason}")
    pack = choice.insightface_pack or cfg.insightface_pack
    return dataclasses.replace(cfg, backend=choice.backend, insightface_pack=pack, models_dir=models_dir)


class VideoWorker:
    """Ray Data actor: loads the face stack once, processes one work item (a video or a segment) per row."""

    cfg: BuildConfig  # bound per run by pipelines.pools (actor_pool, bind_config)

    def __init__(self) -> None:
        import cv2

        cv2.setNumThreads(1)  # one CPU per actor: parallelism comes from Ray, not from inside OpenCV
        self.stack = face_stack(self.cfg)
        self.run = RunDir(self.cfg.out)
        self._plans: dict[str, Plan] = {}

    def __call__(self, batch: dict) -> dict:
        """Process and commit every item of the batch; one result row each (:data:`_RESULT_COLUMNS`)."""
        out: dict[str, list] = {k: [] for k in _RESULT_COLUMNS}
        for i in range(len(batch["video_id"])):
            row = self._run_item(batch, i)
            for k in out:
                out[k].append(row[k])
        return out

    def _run_item(self, batch: dict, i: int) -> dict:
        src = _source(batch, i)
        seg_no = int(batch["segment"][i]) if "segment" in batch else -1
        started, t0 = time.time(), time.perf_counter()
        result = self._result(src, seg_no)
        summary = self._commit(src, seg_no, result, note=str(batch["note"][i]) if "note" in batch else "")
        return {
            **summary,
            "seconds": json.dumps(summary["seconds"]),
            # how long this worker was busy on it, and when (run.json: summary.workers)
            "busy_s": time.perf_counter() - t0,
            "started": started,
            "ended": time.time(),
        }

    def _result(self, src: SourceFile, seg_no: int) -> VideoOutput:
        """The item's output, or a failure when earlier workers kept dying on it."""
        key = src.video_id if seg_no < 0 else self.run.segment_key(src.video_id, seg_no)
        if self.run.count_attempt(key) > MAX_ATTEMPTS:
            crash = VideoError(
                "process",
                "WorkerCrash",
                f"a worker died on this file {MAX_ATTEMPTS} times "
                "(a crash inside a native decoder or model); the file is skipped",
            )
            return failed_output(src, self.stack.embedder.dim, crash)
        if seg_no >= 0:
            return self.process_segment(src, seg_no)
        return self.process(src)

    def _commit(self, src: SourceFile, seg_no: int, result: VideoOutput, *, note: str) -> dict:
        """Write the item's files and marker; returns the summary stored in the marker."""
        summary = {
            "video_id": src.video_id,
            "path": src.rel_path,
            "segment": seg_no,
            "status": result.status,
            "num_frames": result.num_frames,
            "num_sampled": result.num_sampled,
            "num_faces": result.tables["faces"].num_rows,
            "seconds": result.seconds,
            # peak resident memory of this worker process so far (Linux: KiB)
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker": f"{socket.gethostname()}:{os.getpid()}",  # which worker process did it
        }
        if result.note or note:
            summary["note"] = result.note or note
        if seg_no >= 0:
            errors = result.tables["errors"]
            summary["error"] = errors["message"][0].as_py() if errors.num_rows else None
            self.run.write_segment(src.video_id, seg_no, result.tables, summary)
        else:
            self.run.write_video(src.video_id, result.tables, summary)
        return summary

    def process(self, src: SourceFile) -> VideoOutput:
        """All per-video steps on one file (the part a native crash can kill)."""
        return process_video(src, self.stack, self.cfg)

    def process_segment(self, src: SourceFile, seg_no: int) -> VideoOutput:
        """One segment of a long video (datakit.video.segments); an unforeseen library error becomes an error row."""
        plans = self._plans
        if src.video_id not in plans:
            plans.clear()  # one long video's plan at a time (the pts map of a film is a few MB)
            plans[src.video_id] = Plan.load(self.run.plan_path(src.video_id))
        try:
            return process_segment(src, self.stack, self.cfg, plans[src.video_id], seg_no)
        except Exception as err:
            where = traceback.extract_tb(err.__traceback__)[-1]
            message = f"{err} (in {where.name}, {Path(where.filename).name}:{where.lineno}; segment {seg_no})"
            return failed_output(src, self.stack.embedder.dim, VideoError("process", type(err).__name__, message))


def _source(batch: dict, i: int) -> SourceFile:
    """The source file of row ``i`` of a batch (Ray Data hands the work items over as columns)."""
    return SourceFile(
        Path(batch["path"][i]),
        str(batch["rel_path"][i]),
        str(batch["video_id"][i]),
        int(batch["size_bytes"][i]),
        str(batch["kind"][i]),
        str(batch["problem"][i]),
    )


def run_videos(
    cfg: BuildConfig,
    todo: list[SourceFile],
    progress: bool,
    *,
    total: int,
    already: int,
    workers_busy: dict | None = None,
) -> dict:
    """Run the per-video stage on the videos (and long videos' segments) still to do; returns the stage
    seconds summed over items. ``workers_busy`` collects, per worker process, its busy seconds, items,
    videos and longest wait for work (``max_idle_s``, between the stage's first item start and last end)."""
    timings: dict[str, float] = {}
    if not todo:
        return timings
    init_ray(cfg)
    run = RunDir(cfg.out)
    plans = load_plans(run, todo)
    items = _work_items(run, todo, plans, cfg)
    busy = workers_busy if workers_busy is not None else {}
    bar = tqdm(total=total, initial=already, desc="videos", unit="video", disable=not progress)
    tally = _Tally(run, bar, {s.video_id: s for s in todo}, timings, busy)
    for plan in plans.values():  # a killed run's plans; finishes videos killed after their last segment
        tally.plan_seen(plan)
    if items:
        for row in _stream(cfg, items).iter_rows():
            tally.add(row)
    tally.close()
    bar.close()
    return timings


def _work_items(run: RunDir, todo: list[SourceFile], plans: dict[str, Plan], cfg: BuildConfig) -> list[dict]:
    """The rows handed to the stage, in order: whole videos and the segments of planned videos not yet
    committed, biggest first (long work starts early instead of becoming the tail), then the long videos
    still to plan (pipelines.long_videos: planned beside the workers, which meanwhile take the rest)."""
    items: list[dict] = []
    to_plan: list[dict] = []
    for s in todo:
        base = {
            "path": str(s.path),
            "rel_path": s.rel_path,
            "video_id": s.video_id,
            "size_bytes": s.size_bytes,
            "kind": s.kind,
            "problem": s.problem,
            "note": "",
        }
        plan = plans.get(s.video_id)
        if plan is not None and plan.split:
            done = run.done_segments(s.video_id)
            items.extend({**base, "segment": n} for n in range(len(plan.segments)) if n not in done)
        elif plan is not None:
            items.append({**base, "segment": -1, "note": f"not split: {plan.reason}"})
        elif is_long(s, cfg):
            to_plan.append({**base, "segment": PLAN})
        else:
            items.append({**base, "segment": -1})
    order = lambda r: (-r["size_bytes"], r["video_id"], r["segment"])  # noqa: E731
    return sorted(items, key=order) + sorted(to_plan, key=order)


def _stream(cfg: BuildConfig, items: list[dict]) -> ray.data.Dataset:
    """The work items through a pool of :class:`VideoWorker` actors, one item per call; plan items are
    expanded into their segments on the way (:func:`pipelines.long_videos.plan_rows`)."""
    workers = cfg.workers or max(1, int(ray.available_resources().get("CPU", 1)))

    def expand(ds: ray.data.Dataset) -> ray.data.Dataset:
        if not any(r["segment"] == PLAN for r in items):
            return ds
        # One row per block: a plan item's segments then go to every worker, not as one block to one of them
        # (this dataset's context only).
        ds.context.target_max_block_size = 1
        # num_cpus=0: beside the workers, which hold the CPUs (a first pass is light next to them)
        planner = {"fn_kwargs": {"cfg": cfg, "workers": workers}, "concurrency": planner_concurrency(workers)}
        return ds.flat_map(plan_rows, num_cpus=0, **planner)

    # a plan item may become as many segments as there are workers, or more
    expected = sum(workers if r["segment"] == PLAN else 1 for r in items)
    pool = {"batch_size": 1, "num_actors": workers, "env": _ONE_THREAD, "prepare": expand, "expected_items": expected}
    return actor_pool(VideoWorker, cfg, items, **pool)


@dataclasses.dataclass(slots=True)
class _Tally:
    """The driver's side of the stage: the progress bar, the split videos (a video's row is written when its
    last segment is in), and the sums for run.json."""

    run: RunDir
    bar: tqdm
    sources: dict[str, SourceFile]
    timings: dict[str, float]  # stage seconds summed over items, and the peak worker memory
    busy: dict[str, dict]  # worker process -> busy seconds, items, videos, longest idle time
    plans: dict[str, Plan] = dataclasses.field(default_factory=dict)  # split videos seen
    finished: set[str] = dataclasses.field(default_factory=set)
    spans: dict[str, list] = dataclasses.field(default_factory=dict)  # worker -> (started, ended) per item
    seg_total: int = 0
    seg_done: int = 0

    def plan_seen(self, plan: Plan, *, earlier: bool = True) -> None:
        """A split video's plan: from an earlier run (its committed segments count as done), or just made by
        a first pass of this one (its segments are counted as their rows come in)."""
        if not plan.split or plan.video_id in self.plans:
            return
        self.plans[plan.video_id] = plan
        self.seg_total += len(plan.segments)
        if earlier:
            self.seg_done += len(self.run.done_segments(plan.video_id))
        else:
            self.timings["first_pass"] = self.timings.get("first_pass", 0.0) + plan.seconds
        self._finish_if_done(plan.video_id)

    def _finish_if_done(self, video_id: str) -> None:
        """Every segment of a split video is in: its ``videos`` row and marker."""
        plan = self.plans[video_id]
        if video_id in self.finished or len(self.run.done_segments(video_id)) < len(plan.segments):
            return
        self.finished.add(video_id)
        if not self.run.marker(video_id).exists():
            finish_split_video(self.run, self.sources[video_id], plan)
            self.bar.update(1)

    def add(self, row: dict) -> None:
        """One result row of the actors."""
        vid = row["video_id"]
        if row["segment"] >= 0:
            if vid not in self.plans:  # planned during this stage: its first segment is in
                self.plan_seen(Plan.load(self.run.plan_path(vid), with_pts=False), earlier=False)
            self.seg_done += 1
            self._finish_if_done(vid)
        else:
            self.bar.update(1)
        tail = f" (segments {self.seg_done}/{self.seg_total})" if self.seg_total else ""
        self.bar.set_postfix_str(f"{row['status']}: {row['path']}{tail}")
        timings = self.timings
        for k, v in json.loads(row["seconds"]).items():
            timings[k] = timings.get(k, 0.0) + float(v)
        timings["worker_peak_rss_mb"] = max(timings.get("worker_peak_rss_mb", 0.0), float(row["peak_rss_mb"]))
        mine = self.busy.setdefault(row["worker"], {"busy_s": 0.0, "items": 0, "videos": []})
        mine["busy_s"] = round(mine["busy_s"] + float(row["busy_s"]), 3)
        mine["items"] += 1
        if row["path"] not in mine["videos"]:
            mine["videos"].append(row["path"])
        self.spans.setdefault(row["worker"], []).append((float(row["started"]), float(row["ended"])))

    def close(self) -> None:
        """Per worker, the longest time it waited for work between the stage's first start and last end."""
        if not self.spans:
            return
        first = min(a for spans in self.spans.values() for a, _ in spans)
        last = max(b for spans in self.spans.values() for _, b in spans)
        for worker, spans in self.spans.items():
            edges = [first, *(x for span in sorted(spans) for x in span), last]
            gaps = [b - a for a, b in zip(edges[::2], edges[1::2], strict=True)]
            self.busy[worker]["max_idle_s"] = round(max(0.0, *gaps), 3)
