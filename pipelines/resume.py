"""The resume policy of ``datakit build``: which settings may differ when a run is continued.

A build into a folder that holds an earlier run continues it (every committed video is kept, see
``datakit.store``), unless that run was made by another pipeline version, another face stack, or settings
that change what the per-video stage writes: mixing two configurations in one dataset is refused with a
:class:`RunConflictError` (``--overwrite`` starts over instead).
"""

from __future__ import annotations

import dataclasses

from datakit import schema
from datakit.config import BuildConfig
from datakit.faces import FaceStack
from datakit.store import RunDir

__all__ = ["GLOBAL_ONLY", "RunConflictError", "check_resume"]


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


def check_resume(cfg: BuildConfig, run: RunDir, stack: FaceStack) -> None:
    """Start over on ``overwrite``; refuse to resume a run whose output settings were different."""
    if cfg.overwrite:
        run.clear()
        return
    if not run.has_record():
        return
    old = run.record()
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
