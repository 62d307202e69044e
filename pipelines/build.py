"""``datakit build``: the per-video Ray Data stage, then the global passes, then run.json.

Per-video work streams through Ray Data: one actor per worker loads the face stack once and turns
videos into per-video Parquet files plus a completion marker (datakit.store). The global passes
(identities across videos, reference views, training samples) read those files and run in the driver:
they need every video, and they are cheap next to decoding and face models. A killed run resumes from
the markers; ``overwrite`` starts over.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import pyarrow as pa
import ray
from tqdm import tqdm

from datakit import schema
from datakit.captions import caption_clips
from datakit.captions.base import validate as validate_captioner
from datakit.config import BuildConfig
from datakit.decode import VideoError
from datakit.discover import SourceFile, discover, path_id
from datakit.faces import FaceStack, build_face_stack
from datakit.faces.model_files import resolve_models_dir
from datakit.store import RunDir, write_atomic, write_json_atomic
from datakit.video_job import VideoOutput, failed_output, process_video
from pipelines.global_pass import clip_pass, run_global
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

    def __call__(self, batch: dict) -> dict:

        out: dict[str, list] = {
            "video_id": [],
            "path": [],
            "status": [],
            "num_frames": [],
            "num_sampled": [],
            "num_faces": [],
            "seconds": [],
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
            if self.run.count_attempt(src.video_id) > MAX_ATTEMPTS:
                crash = VideoError(
                    "process",
                    "WorkerCrash",
                    f"a worker died on this file {MAX_ATTEMPTS} times "
                    "(a crash inside a native decoder or model); the file is skipped",
                )
                result = failed_output(src, self.stack.embedder.dim, crash)
            else:
                result = self.process(src)
            summary = {
                "video_id": src.video_id,
                "path": src.rel_path,
                "status": result.status,
                "num_frames": result.num_frames,
                "num_sampled": result.num_sampled,
                "num_faces": result.tables["faces"].num_rows,
                "seconds": result.seconds,
            }
            self.run.write_video(src.video_id, result.tables, summary)
            for key in out:
                out[key].append(summary[key] if key != "seconds" else json.dumps(summary["seconds"]))
        return out

    def process(self, src: SourceFile) -> VideoOutput:
        """All per-video steps on one file (the part a native crash can kill)."""
        return process_video(src, self.stack, self.cfg)


def _worker_class(cfg: BuildConfig) -> type[VideoWorker]:
    """VideoWorker with this run's config as a class attribute.

    The config then travels with the class definition instead of as actor constructor arguments in the
    object store, which Ray cannot restore if an actor restarts (and warns about on every run).
    """
    return type("VideoWorker", (VideoWorker,), {"cfg": cfg})


def _init_ray(cfg: BuildConfig) -> None:
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Keep the terminal to our progress bar and summary; Ray Data still logs to its session log file.
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_data_logging.yaml")))
    if address:
        # A remote cluster needs our code: ship the two packages (its nodes need the dependencies).
        import datakit
        import pipelines

        runtime_env = {"py_modules": [os.path.dirname(datakit.__file__), os.path.dirname(pipelines.__file__)]}
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.ERROR)
    else:
        ray.init(
            num_cpus=cfg.workers or os.cpu_count(),
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    logging.getLogger("ray").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is one bar over videos
    ctx.print_on_execution_start = False


#: settings that change how a run is executed but not what it writes: free to differ on resume
_EXECUTION_ONLY = frozenset({"src", "out", "workers", "address", "overwrite"})
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
    timings = _run_videos(
        _worker_config(cfg, stack), todo, progress, total=len(unique), already=len(unique) - len(todo)
    )
    _record_duplicates(run, duplicates, unique)
    t_global = time.perf_counter()
    global_seconds = run_global(run, cfg, stack)
    timings["global"] = time.perf_counter() - t_global
    # Captions (datakit.captions): the kept clips of `clips`, on a Ray actor pool, resumable per clip; then
    # the clip pass again so that the captions reach `clips` and `samples`.
    captions = caption_clips(run, cfg, progress=progress)
    if captions.configured:
        timings["captions"] = captions.seconds
        global_seconds.update({f"recaption.{k}": v for k, v in clip_pass(run, cfg, stack).items()})
    summary = BuildSummary.from_run(
        run,
        stack,
        global_seconds,
        wall_s=time.time() - started,
        resumed=len(unique) - len(todo),
        stage_seconds=timings,
        captions=captions,
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


def _run_videos(cfg: BuildConfig, todo: list[SourceFile], progress: bool, *, total: int, already: int) -> dict:
    timings: dict[str, float] = {}
    if not todo:
        return timings
    _init_ray(cfg)
    items = [
        {
            "path": str(s.path),
            "rel_path": s.rel_path,
            "video_id": s.video_id,
            "size_bytes": s.size_bytes,
            "kind": s.kind,
            "problem": s.problem,
        }
        for s in todo
    ]
    # Biggest first: the long videos start early instead of becoming the tail of the run.
    items.sort(key=lambda r: -r["size_bytes"])
    workers = cfg.workers or max(1, int(ray.available_resources().get("CPU", 1)))
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _worker_class(cfg),
        batch_size=1,
        num_cpus=1,
        # one CPU per actor: keep BLAS/OpenMP pools (dlib, onnxruntime) from oversubscribing the node
        runtime_env={"env_vars": {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}},
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))),
    )
    bar = tqdm(total=total, initial=already, desc="videos", unit="video", disable=not progress)
    for row in ds.iter_rows():
        bar.update(1)
        bar.set_postfix_str(f"{row['status']}: {row['path']}")
        for k, v in json.loads(row["seconds"]).items():
            timings[k] = timings.get(k, 0.0) + float(v)
    bar.close()
    return timings
