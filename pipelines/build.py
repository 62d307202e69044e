"""``datakit build``: the per-video Ray Data stage, then the global passes, then run.json.

Per-video work streams through Ray Data: one actor per worker loads the face stack once and turns
videos into per-video Parquet files plus a completion marker (datakit.store). The global passes
(identities across videos, reference views, training samples) read those files and run in the driver:
they need every video, and they are cheap next to decoding and face models. A killed run resumes from
the markers; ``overwrite`` starts over.

A video longer than ``segment_min_s`` first gets a first pass on Ray (datakit.video.segments: shots and pts map,
stored as ``_plan/<video_id>.json``); its segments of whole shots are then work items of the same stream as
the other videos, each committed with its own marker; the driver writes the video's ``videos`` row and
marker once its last segment is in.
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

import pyarrow as pa
import ray
from tqdm import tqdm

from datakit import schema
from datakit.clips.captions.base import validate as validate_captioner
from datakit.config import BuildConfig
from datakit.faces import FaceStack, build_face_stack
from datakit.faces.model_files import resolve_models_dir
from datakit.passes.runner import clip_pass, run_global
from datakit.store import RunDir, write_atomic, write_json_atomic
from datakit.video.decode import VideoError, probe
from datakit.video.discover import SourceFile, discover, path_id
from datakit.video.job import VideoOutput, failed_output, process_segment, process_video
from datakit.video.segments import Plan, first_pass
from pipelines.clip_stages import caption_clips, score_clips
from pipelines.ray_runtime import init_ray
from pipelines.run_info import BuildSummary, run_record

MAX_ATTEMPTS = 3  #: a video that killed this many workers is recorded as failed instead of tried again


class RunConflictError(RuntimeError):
    """The output folder holds a run made with settings that change the manifests."""


def _make_stack(cfg: BuildConfig) -> FaceStack:
    return build_face_stack(
        cfg.backend,
        models_dir=cfg.models_dir,
        insightface_pack=cfg.insightface_pack,
        det_threshold=cfg.det_threshold,
        detect_max_side=cfg.detect_max_side,
    )


class VideoWorker:
    """Ray Data actor: loads the face stack once, processes one video per call."""

    cfg: BuildConfig  # bound per run by ``_worker_class`` (see there)

    def __init__(self) -> None:
        import cv2

        cv2.setNumThreads(1)  # one CPU per actor: parallelism comes from Ray, not from inside OpenCV
        self.stack = _make_stack(self.cfg)
        self.run = RunDir(self.cfg.out)
        self._plans: dict[str, Plan] = {}

    def __call__(self, batch: dict) -> dict:

        out: dict[str, list] = {
            "video_id": [],
            "path": [],
            "segment": [],
            "status": [],
            "num_frames": [],
            "num_sampled": [],
            "num_faces": [],
            "seconds": [],
            "peak_rss_mb": [],
            "worker": [],
            "busy_s": [],
        }
        for i in range(len(batch["video_id"])):
            src = SourceFile(
                Path(batch["path"][i]),
                str(batch["rel_path"][i]),
                str(batch["video_id"][i]),
                int(batch["size_bytes"][i]),
                str(batch["kind"][i]),
                str(batch["problem"][i]),
            )
            started = time.perf_counter()
            seg_no = int(batch["segment"][i]) if "segment" in batch else -1
            key = src.video_id if seg_no < 0 else self.run.segment_key(src.video_id, seg_no)
            if self.run.count_attempt(key) > MAX_ATTEMPTS:
                crash = VideoError(
                    "process",
                    "WorkerCrash",
                    f"a worker died on this file {MAX_ATTEMPTS} times "
                    "(a crash inside a native decoder or model); the file is skipped",
                )
                result = failed_output(src, self.stack.embedder.dim, crash)
            elif seg_no >= 0:
                result = self.process_segment(src, seg_no)
            else:
                result = self.process(src)
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
            }
            note = str(batch["note"][i]) if "note" in batch else ""
            if result.note or note:
                summary["note"] = result.note or note
            if seg_no >= 0:
                errors = result.tables["errors"]
                summary["error"] = errors["message"][0].as_py() if errors.num_rows else None
                self.run.write_segment(src.video_id, seg_no, result.tables, summary)
            else:
                self.run.write_video(src.video_id, result.tables, summary)
            # which worker process did it, and how long it was busy on it (run.json: summary.workers)
            summary_row = {**summary, "worker": f"{socket.gethostname()}:{os.getpid()}"}
            summary_row["busy_s"] = time.perf_counter() - started
            for k in out:
                out[k].append(summary_row[k] if k != "seconds" else json.dumps(summary["seconds"]))
        return out

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


def _worker_class(cfg: BuildConfig) -> type[VideoWorker]:
    """VideoWorker with this run's config as a class attribute.

    The config then travels with the class definition instead of as actor constructor arguments in the
    object store, which Ray cannot restore if an actor restarts (and warns about on every run).
    """
    return type("VideoWorker", (VideoWorker,), {"cfg": cfg})


#: settings that change how a run is executed but not what it writes: free to differ on resume
#: (segment_*: a long video keeps the plan of its first pass, stored in the run folder, whatever they are now)
_EXECUTION_ONLY = frozenset({"src", "out", "workers", "address", "overwrite", "segment_min_s", "segment_s"})
#: settings read only by the global passes (gates, linking, references, samples): free to differ on resume,
#: since those passes always run again over every video's stored output - no model re-runs
GLOBAL_ONLY = frozenset(
    {
        "gate_min_det_score",
        "gate_min_face_px",
        "gate_min_sharpness",
        "gate_min_landmark_ok",
        "same_person_cosine",
        "references_per_view",
        "near_duplicate_ncc",
        "min_sample_s",
        # clip filters (datakit/filters.py): applied in clip_pass
        *(f.name for f in dataclasses.fields(BuildConfig) if f.name.startswith("filter_")),
        # captions: a stage of their own, resumable per clip; captions of another model/prompt are added
        *(f.name for f in dataclasses.fields(BuildConfig) if f.name.startswith("caption")),
        # open_clip scores: a stage of their own as well (datakit.clips.scores)
        "clip_model_dir",
        "aesthetic_head",
    }
)
#: output settings added later, with the value that a run.json written before them was built with
_BEFORE_FIELD = {"detect_max_side": 0}


def _check_resume(cfg: BuildConfig, run: RunDir, stack: FaceStack) -> None:
    """Start over on ``overwrite``; refuse to resume a run whose output settings were different."""
    if cfg.overwrite:
        run.clear()
        return
    record = run.root / "run.json"
    if not record.exists():
        return
    old = json.loads(record.read_text())
    old_version = old.get("pipeline_version")
    if old_version and old_version != schema.PIPELINE_VERSION:
        raise RunConflictError(
            f"{run.root} was built by {old_version}, this is {schema.PIPELINE_VERSION} (its manifests differ):"
            " pass --overwrite to start over or choose another --out"
        )
    old_stack = old.get("face_stack", {}).get("name")
    if old_stack and old_stack != stack.name:
        raise RunConflictError(
            f"{run.root} was built with face stack {old_stack!r}, this run uses "
            f"{stack.name!r}; pass --overwrite to start over or choose another --out"
        )
    old_cfg = old.get("config", {})
    free = _EXECUTION_ONLY | GLOBAL_ONLY
    new_cfg = {k: v for k, v in cfg.to_dict().items() if k not in free}
    changed = sorted(k for k, v in new_cfg.items() if old_cfg.get(k, _BEFORE_FIELD.get(k, v)) != v)
    if changed:
        raise RunConflictError(
            f"{run.root} was built with other settings ({', '.join(changed)}); resuming would mix two "
            "configurations in one dataset: pass --overwrite to start over or choose another --out"
        )


def build(cfg: BuildConfig, *, progress: bool = True) -> BuildSummary:
    """Run the whole curation: discover, per-video stage on Ray, global passes; returns the summary."""
    started = time.time()
    run = RunDir(cfg.out)
    stack = _make_stack(cfg)
    _check_resume(cfg, run, stack)
    validate_captioner(cfg)  # a wrong caption setting fails now, not after the face models ran
    run.root.mkdir(parents=True, exist_ok=True)
    run.clean_temporaries()
    sources = discover(cfg.src)
    unique, duplicates = _dedupe(sources)
    done = run.done_ids()
    todo = [s for s in unique if s.video_id not in done]
    write_json_atomic(run_record(cfg, stack, started, state="running"), run.root / "run.json")
    workers_busy: dict[str, dict] = {}
    timings = _run_videos(
        _worker_config(cfg, stack),
        todo,
        progress,
        total=len(unique),
        already=len(unique) - len(todo),
        workers_busy=workers_busy,
    )
    _record_duplicates(run, duplicates, unique)
    t_global = time.perf_counter()
    global_seconds = run_global(run, cfg, stack)
    timings["global"] = time.perf_counter() - t_global
    # Captions (datakit.clips.captions): the kept clips of `clips`, on a Ray actor pool, resumable per clip; then
    # the clip pass again so that the captions reach `clips` and `samples`.
    captions = caption_clips(run, cfg, progress=progress)
    if captions.configured:
        timings["captions"] = captions.seconds
        global_seconds.update({f"recaption.{k}": v for k, v in clip_pass(run, cfg).items()})
    # open_clip scores (datakit.clips.scores), when configured: after captions, so that the image-text score
    # sees them; then the clip pass again so that the low_clip_score / low_aesthetic filters act.
    scores = score_clips(run, cfg, progress=progress)
    if scores.scorer:
        timings["clip_scores"] = scores.seconds
        global_seconds.update({f"rescore.{k}": v for k, v in clip_pass(run, cfg).items()})
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
    write_json_atomic(run_record(cfg, stack, started, state="finished", summary=summary), run.root / "run.json")
    return summary


def _dedupe(sources: list[SourceFile]) -> tuple[list[SourceFile], list[SourceFile]]:
    seen: set[str] = set()
    unique, dups = [], []
    for s in sources:
        (dups if s.video_id in seen else unique).append(s)
        seen.add(s.video_id)
    return unique, dups


def _record_duplicates(run: RunDir, duplicates: list[SourceFile], unique: list[SourceFile]) -> None:
    """Byte-identical copies get a ``duplicate`` videos row naming the copy that was processed.

    The row's id is derived from the copy's path (like an unreadable file's), not its content, so
    ``video_id`` stays unique in ``videos`` and joins on it never count a video twice.
    """
    first = {s.video_id: s for s in unique}
    for dup in duplicates:
        kept = first[dup.video_id]
        row = {
            "video_id": path_id(dup.rel_path),
            "path": dup.rel_path,
            "status": "duplicate",
            "size_bytes": dup.size_bytes,
            "error": f"same content as {kept.rel_path} (video_id {kept.video_id})",
            "pipeline_version": schema.PIPELINE_VERSION,
        }
        write_atomic(
            pa.Table.from_pylist([row], schema=schema.VIDEOS), run.root / "videos" / f"{row['video_id']}.parquet"
        )


def _worker_config(cfg: BuildConfig, stack: FaceStack) -> BuildConfig:
    """The config the per-video workers get: the driver's choice of stack and models folder, pinned.

    With ``auto`` and the per-user default folder, a cluster node without the files would otherwise
    fall back to dlib on its own while run.json names the driver's stack; pinned, it fails loudly.
    """
    if cfg.backend != "auto":
        return dataclasses.replace(cfg, models_dir=resolve_models_dir(cfg.models_dir))
    backend = "yunet" if stack.name.startswith("yunet") else "dlib"
    return dataclasses.replace(cfg, backend=backend, models_dir=resolve_models_dir(cfg.models_dir))


def _run_videos(
    cfg: BuildConfig,
    todo: list[SourceFile],
    progress: bool,
    *,
    total: int,
    already: int,
    workers_busy: dict | None = None,
) -> dict:
    """Run the per-video stage on the videos (and long videos' segments) still to do; returns the stage
    seconds summed over items. ``workers_busy`` collects, per worker process, its busy seconds, items and
    videos."""
    timings: dict[str, float] = {}
    busy = workers_busy if workers_busy is not None else {}
    if not todo:
        return timings
    init_ray(cfg)
    run = RunDir(cfg.out)
    plans, notes = _plan_long_videos(cfg, run, todo, timings)
    items, pending = [], {}  # pending: video id -> segments still to run
    by_id = {s.video_id: s for s in todo}
    for s in todo:
        base = {
            "path": str(s.path),
            "rel_path": s.rel_path,
            "video_id": s.video_id,
            "size_bytes": s.size_bytes,
            "kind": s.kind,
            "problem": s.problem,
            "note": notes.get(s.video_id, ""),
        }
        plan = plans.get(s.video_id)
        if plan is None:
            items.append({**base, "segment": -1})
            continue
        done = run.done_segments(s.video_id)
        left = [n for n in range(len(plan.segments)) if n not in done]
        pending[s.video_id] = len(left)
        items.extend({**base, "segment": n} for n in left)
    bar = tqdm(total=total, initial=already, desc="videos", unit="video", disable=not progress)
    seg_total = sum(len(p.segments) for p in plans.values())
    seg_done = seg_total - sum(pending.values())
    for vid in [v for v, n in pending.items() if n == 0]:  # killed after its last segment, before its row
        _finish_split_video(run, by_id[vid], plans[vid])
        bar.update(1)
    if items:
        # Biggest first: the long videos start early instead of becoming the tail of the run.
        items.sort(key=lambda r: (-r["size_bytes"], r["video_id"], r["segment"]))
        workers = cfg.workers or max(1, int(ray.available_resources().get("CPU", 1)))
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _worker_class(cfg),
            batch_size=1,
            num_cpus=1,
            # one CPU per actor: keep BLAS/OpenMP pools (dlib, onnxruntime) from oversubscribing the node
            runtime_env={"env_vars": {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}},
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))),
        )
        for row in ds.iter_rows():
            vid = row["video_id"]
            if row["segment"] >= 0:
                seg_done += 1
                pending[vid] -= 1
                if pending[vid] == 0:
                    _finish_split_video(run, by_id[vid], plans[vid])
                    bar.update(1)
            else:
                bar.update(1)
            tail = f" (segments {seg_done}/{seg_total})" if seg_total else ""
            bar.set_postfix_str(f"{row['status']}: {row['path']}{tail}")
            for k, v in json.loads(row["seconds"]).items():
                timings[k] = timings.get(k, 0.0) + float(v)
            timings["worker_peak_rss_mb"] = max(timings.get("worker_peak_rss_mb", 0.0), float(row["peak_rss_mb"]))
            mine = busy.setdefault(row["worker"], {"busy_s": 0.0, "items": 0, "videos": []})
            mine["busy_s"] = round(mine["busy_s"] + float(row["busy_s"]), 3)
            mine["items"] += 1
            if row["path"] not in mine["videos"]:
                mine["videos"].append(row["path"])
    bar.close()
    return timings


def _first_pass_task(path: str, video_id: str, cfg: BuildConfig) -> Plan:
    """Ray task: a long video's first pass (datakit.video.segments); never raises (a failure means: not split)."""
    try:
        info = probe(path)
        plan = first_pass(path, video_id, info, cfg)
    except Exception as err:  # the single-item path then records the error properly
        return Plan(video_id, False, reason=f"first pass failed: {type(err).__name__}: {err}")
    plan.videos_row = {
        "duration_s": info.duration_s,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "codec": info.codec,
    }
    return plan


def _plan_long_videos(
    cfg: BuildConfig, run: RunDir, todo: list[SourceFile], timings: dict
) -> tuple[dict[str, Plan], dict[str, str]]:
    """The plans of the long videos to split (loaded from an earlier run, else made by a first pass on Ray),
    and why a long video is not split (it then runs as one item)."""
    plans: dict[str, Plan] = {}
    notes: dict[str, str] = {}
    needed: list[SourceFile] = []
    for s in todo:
        path = run.plan_path(s.video_id)
        if path.exists():  # an earlier (killed) run's plan: its segment markers refer to it
            plan = Plan.load(path, with_pts=False)
        elif s.kind == "video" and cfg.segment_min_s:
            try:
                info = probe(s.path)
            except VideoError:
                continue  # the single-item path records why
            if info.duration_s and info.duration_s > cfg.segment_min_s:
                needed.append(s)
            continue
        else:
            continue
        if plan.split:
            plans[s.video_id] = plan
        else:
            notes[s.video_id] = f"not split: {plan.reason}"
    if needed:
        t0 = time.perf_counter()
        task = ray.remote(num_cpus=1)(_first_pass_task)
        refs = {task.remote(str(s.path), s.video_id, cfg): s for s in needed}
        remaining = list(refs)
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1)
            plan = ray.get(ready[0])
            plan.save(run.plan_path(plan.video_id))
            if plan.split:
                plan.pts = []  # the workers read it from the run folder
                plans[plan.video_id] = plan
            else:
                notes[plan.video_id] = f"not split: {plan.reason}"
            timings["first_pass"] = timings.get("first_pass", 0.0) + plan.seconds
        timings["first_pass_wall"] = time.perf_counter() - t0
    return plans, notes


def _finish_split_video(run: RunDir, src: SourceFile, plan: Plan) -> None:
    """Every segment of a long video is committed: write its ``videos`` row and its marker."""
    segs = [run.segment_summary(src.video_id, n) for n in range(len(plan.segments))]
    errors = [s["error"] for s in segs if s.get("error")]
    num_faces = sum(s["num_faces"] for s in segs)
    status = "partial" if errors else ("no_faces" if num_faces == 0 else "ok")
    row = {
        "video_id": src.video_id,
        "path": src.rel_path,
        "size_bytes": src.size_bytes,
        **plan.videos_row,
        "status": status,
        "num_frames": plan.num_frames,
        "error": errors[0] if errors else None,
        "pipeline_version": schema.PIPELINE_VERSION,
    }
    if not row.get("duration_s"):
        row["duration_s"] = plan.clips[-1][3] if plan.clips else None
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
    videos = pa.Table.from_pylist([row], schema=schema.VIDEOS)
    run.finish_split_video(src.video_id, videos, summary)
