"""The resume policy of ``datakit build``: which settings may differ when a run is continued.

A build into a folder that holds an earlier run continues it (every committed video is kept, see
``datakit.store``), unless that run was made by another pipeline version, another face stack, or settings
that change what the per-video stage writes: mixing two configurations in one dataset is refused with a
:class:`RunConflictError` (``--overwrite`` starts over instead).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from datakit import schema
from datakit.config import BuildConfig
from datakit.faces import FaceStack
from datakit.store import PER_VIDEO_TABLES, RunDir

__all__ = ["GLOBAL_ONLY", "RunConflictError", "check_resume", "reconcile_source", "run_video_ids"]


class RunConflictError(RuntimeError):
    """The output folder holds a run made with settings that change the manifests."""


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
        "consolidate_cosine",
        "consolidate_top_k",
        "fragment_min_faces",
        "references_per_view",
        "near_duplicate_ncc",
        "min_sample_s",
        # clip filters (datakit.clips.filters): applied by the passes (datakit.passes.runner)
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


def check_resume(cfg: BuildConfig, run: RunDir, stack: FaceStack, *, reconcile_src: bool = False) -> None:
    """Start over on ``overwrite``; refuse to resume a run whose output settings or source were different
    (another source is accepted with ``reconcile_src``: the build then calls :func:`reconcile_source`)."""
    if cfg.overwrite:
        run.clear()
        return
    if not run.has_record():
        return
    old = run.record()
    old_src = recorded_source(old)
    if old_src is not None and old_src != Path(cfg.src).resolve() and not reconcile_src:
        raise RunConflictError(
            f"{run.root} was built from --src {old_src}, this build reads {Path(cfg.src).resolve()}: pass"
            " --reconcile-src to remove from the run the videos not in the new source, --overwrite to start"
            " over, or choose another --out"
        )
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
    changed = _changed_settings(old.get("config", {}), cfg)
    if changed:
        raise RunConflictError(
            f"{run.root} was built with other settings ({', '.join(changed)}); resuming would mix two "
            "configurations in one dataset: pass --overwrite to start over or choose another --out"
        )


def _changed_settings(old_cfg: dict, cfg: BuildConfig) -> list[str]:
    """The settings that change the per-video output and differ from the earlier run's, sorted."""
    free = _EXECUTION_ONLY | GLOBAL_ONLY
    new_cfg = {k: v for k, v in cfg.to_dict().items() if k not in free}
    return sorted(k for k, v in new_cfg.items() if old_cfg.get(k, _BEFORE_FIELD.get(k, v)) != v)


def recorded_source(record: dict) -> Path | None:
    """The source folder a run was built from, resolved (run.json ``src_resolved``, else its config's ``src``)."""
    src = record.get("src_resolved") or (record.get("config") or {}).get("src")
    return Path(src).resolve() if isinstance(src, str) and src else None


def run_video_ids(run: RunDir) -> set[str]:
    """Ids of every video the run holds: a ``videos`` row, a marker (of the video or a segment) or a plan."""
    ids: set[str] = set()
    for name in ("videos", "_done", "_plan"):
        folder = run.root / name
        if folder.is_dir():
            ids.update(p.name.split(".")[0] for p in folder.iterdir() if p.suffix in (".parquet", ".json"))
    return {i for i in ids if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", i)}  # ids, never glob patterns


def reconcile_source(run: RunDir, keep: set[str]) -> list[str]:
    """Remove from the run every video whose id is not in ``keep`` (the new source's videos and rows):
    its per-video and stage files, markers, plan and attempt counts. Returns the removed ids, sorted. The
    global tables are rebuilt by the build's passes afterwards."""
    gone = sorted(run_video_ids(run) - keep)
    stage = run.root / "_stage"
    folders = [run.root / n for n in ("_done", *PER_VIDEO_TABLES, "_plan", "_attempts")]  # markers first
    folders += [p for p in stage.iterdir() if p.is_dir()] if stage.is_dir() else []
    for video_id in gone:
        for folder in folders:
            for p in (folder / f"{video_id}.parquet", folder / f"{video_id}.json", folder / f"{video_id}.pts.npy"):
                p.unlink(missing_ok=True)
            for p in folder.glob(f"{video_id}.s[0-9]*"):  # a long video's segments
                p.unlink(missing_ok=True)
        for p in (run.root / "errors").glob(f"*-{video_id}_c*.parquet"):  # its clips' caption / score errors
            p.unlink(missing_ok=True)
    return gone
