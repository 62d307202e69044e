"""Clip filters: thresholds over the clip quality scores, written as ``clips.drop_reason``.

A dropped clip stays in ``clips`` with the name of the first filter it failed (the fixed order of
``FILTERS``); ``drop_reason`` null = kept. Only kept clips make training samples. The thresholds are
``BuildConfig.filter_*`` fields; None switches a filter off.

Two steps of the build's stage order (:mod:`datakit.passes.runner`) apply them: the cheap filters
(``CHEAP_FILTERS``, over the scores of the per-video scan) decide which clips get captions and model
scores; the model-based filters (``MODEL_FILTERS``, over the open_clip scores) run after those. Every
cheap filter comes before every model-based one in ``FILTERS``, so the two steps give the same
``drop_reason`` as one pass over ``FILTERS``. Changing a threshold re-runs no model:
``datakit filter --manifests RUN --set filter_min_brightness=0.1`` (or a resumed ``datakit build`` with new
values) re-applies them to the stored scores.

Null scores never fail a filter (a score that was not measured: ``motion_score`` of a one-sample clip,
the open_clip scores without a model or caption), except ``main_face_px`` null in a scored clip (a clip
without faces: ``face_share`` is 0) fails ``small_face``. An unscored clip (``face_share`` null, e.g. a
run built before the scores existed) passes every score filter, so such a run keeps its samples.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.config import ConfigError

#: (drop_reason, BuildConfig field, column, kind) in the order they are checked; kind "min" = the value
#: must reach the threshold, "max" = it must not exceed it. ``duration_s`` is end_s - start_s.
FILTERS: tuple[tuple[str, str, str, str], ...] = (
    ("too_short", "filter_min_duration_s", "duration_s", "min"),
    ("too_dark", "filter_min_brightness", "brightness", "min"),
    ("few_faces", "filter_min_face_share", "face_share", "min"),
    ("small_face", "filter_min_main_face_px", "main_face_px", "min"),
    ("blurry", "filter_min_sharpness", "sharpness", "min"),
    ("static", "filter_min_motion", "motion_score", "min"),
    ("too_much_motion", "filter_max_motion", "motion_score", "max"),
    ("low_aesthetic", "filter_min_aesthetic", "aesthetic_score", "min"),
    ("low_clip_score", "filter_min_clip_score", "clip_score", "min"),
)
#: columns whose null value fails their filter in a scored clip (see the module docstring)
_NULL_FAILS = frozenset({"main_face_px"})
FILTER_FIELDS = tuple(f[1] for f in FILTERS)
#: columns computed by a model after captioning (datakit.clips.scores), not during the per-video scan
MODEL_SCORE_COLUMNS = frozenset({"aesthetic_score", "clip_score"})
CHEAP_FILTERS = tuple(f for f in FILTERS if f[2] not in MODEL_SCORE_COLUMNS)
MODEL_FILTERS = tuple(f for f in FILTERS if f[2] in MODEL_SCORE_COLUMNS)
DROP_REASONS = tuple(f[0] for f in FILTERS)


def thresholds(cfg: object) -> dict[str, float | None]:
    """The ``filter_*`` thresholds of a BuildConfig (or any object / dict holding them)."""
    if isinstance(cfg, dict):
        return {name: cfg.get(name) for name in FILTER_FIELDS}
    return {name: getattr(cfg, name, None) for name in FILTER_FIELDS}


def apply_clip_filters(
    clips: pa.Table, filters: object, chain: tuple[tuple[str, str, str, str], ...] = FILTERS, *, fresh: bool = True
) -> pa.Table:
    """``clips`` with ``drop_reason`` set: the first failed filter of ``chain`` (``FILTERS`` order), null = kept.

    ``filters``: a BuildConfig, or a dict of ``filter_*`` thresholds (missing or None = off).
    ``fresh``: decide every clip anew (True), or keep the reasons already set and decide only the kept
    clips (False: the model-based step after the cheap one).
    """
    limits = thresholds(filters)
    n = clips.num_rows
    reason = np.full(n, None, dtype=object)
    if not fresh:
        reason[:] = clips.column("drop_reason").to_pylist()
    undecided = np.array([r is None for r in reason], dtype=bool)
    scored = clips.column("face_share").is_valid().to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
    for name, field_name, column, kind in chain:
        limit = limits.get(field_name)
        if limit is None or not undecided.any():
            continue
        if column == "duration_s":
            values = pc.subtract(clips.column("end_s"), clips.column("start_s"))
        else:
            values = clips.column(column)
        values = values.to_numpy(zero_copy_only=False)  # null -> nan
        values = values if values.dtype.kind == "f" else values.astype(np.float64)
        limit = values.dtype.type(limit)  # compare at the column's precision: 0.1 as float32 is 0.1
        null = np.isnan(values)
        with np.errstate(invalid="ignore"):
            failed = values < limit if kind == "min" else values > limit
        failed = np.where(null, scored & (column in _NULL_FAILS), failed)
        hit = failed & undecided
        reason[hit] = name
        undecided &= ~hit
    idx = clips.schema.get_field_index("drop_reason")
    return clips.set_column(idx, clips.schema.field(idx), pa.array(reason, type=pa.string()))


def drop_counts(clips: pa.Table) -> dict[str, int]:
    """drop_reason -> clips dropped for it, most first."""
    counts = Counter(r for r in clips.column("drop_reason").to_pylist() if r is not None)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass(slots=True)
class FilterSummary:
    """What ``datakit filter`` changed."""

    run: str
    thresholds: dict[str, float | None]
    num_clips: int
    kept: int
    dropped: dict[str, int]
    samples_before: int
    samples_after: int

    def format(self) -> str:
        on = ", ".join(f"{k}={v}" for k, v in self.thresholds.items() if v is not None) or "none"
        dropped = ", ".join(f"{r} {n}" for r, n in self.dropped.items()) or "none"
        return "\n".join(
            [
                f"datakit filter -> {self.run}",
                f"  filters : {on}",
                f"  clips   : {self.num_clips}, kept {self.kept}, dropped {sum(self.dropped.values())} ({dropped})",
                f"  samples : {self.samples_before} -> {self.samples_after}",
            ]
        )


def parse_threshold(name: str, value: object) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "off", "")):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config field {name}: must be a number or none (got {value!r})", field=name) from None


def read_filter_config(path: str | Path) -> dict:
    import tomllib

    path = Path(path)
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    # A full build config is fine: only its filter fields are taken.
    return {k: v for k, v in data.items() if k in FILTER_FIELDS}
