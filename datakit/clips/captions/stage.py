"""The caption stage: caption the kept clips of a run, resumable per clip.

The kept clips come from the build's stage order (:mod:`datakit.passes.runner`: after the cheap clip
filters); a clip is captioned when it has no caption yet from the same (model, prompt version). Work
items, commits to ``<run>/_stage/captions/<batch-id>.parquet``, error rows
``errors/caption-<clip_id>.parquet`` (stage ``caption``) and resume are the
:class:`datakit.clips.base.ClipStage` machinery; :class:`CaptionStage` says how a batch is captioned.
:func:`attach_captions` fills the ``clips`` caption columns from the stage folder.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc

from datakit.clips.base import ClipStage, Resources, latest_per_clip
from datakit.clips.captions.backends import make_captioner
from datakit.clips.captions.base import NOT_CONFIGURED_HINT, ClipFrames, caption_each, caption_model_name
from datakit.config import BuildConfig
from datakit.store import RunDir

#: one row per captioned clip and attempt that succeeded (internal stage table ``_stage/captions``)
CAPTION_ROWS = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("caption_model", pa.string(), nullable=False),
        pa.field("caption_prompt_version", pa.string(), nullable=False),
        pa.field("captioner", pa.string(), nullable=False),  # backend name (qwen2.5-vl | openai)
        pa.field("captioned_at", pa.float64(), nullable=False),  # unix seconds: the latest caption wins
    ]
)
STAGE = "captions"


@dataclass(slots=True)
class CaptionSummary:
    """What one caption stage did."""

    captioner: str
    model: str | None = None
    prompt_version: str | None = None
    kept_clips: int = 0
    already: int = 0  #: kept clips that had a caption of this model and prompt before this run
    captioned: int = 0  #: captioned now
    failed: int = 0  #: failed now (see errors/caption-*.parquet)
    seconds: float = 0.0

    @property
    def configured(self) -> bool:
        return self.captioner != "none"

    def format(self) -> str:
        if not self.configured:
            return NOT_CONFIGURED_HINT
        line = (
            f"{self.captioner} ({self.model}, prompt {self.prompt_version}): {self.captioned} captioned now, "
            f"{self.already} already, {self.failed} failed of {self.kept_clips} kept clips"
        )
        return line + (" (see errors/caption-*.parquet)" if self.failed else "")

    def to_dict(self) -> dict:
        return asdict(self)


def _of_model(rows: pa.Table, model: str, version: str) -> pa.Table:
    return rows.filter(
        pc.and_(pc.equal(rows["caption_model"], model), pc.equal(rows["caption_prompt_version"], version))
    )


def read_captions(run: RunDir) -> pa.Table:
    """Every caption row of the run's stage folder."""
    return run.read(STAGE, CAPTION_ROWS, stage=True)


def _configured(run: RunDir, cfg: BuildConfig | None) -> tuple[str | None, str | None]:
    """(model, prompt version) of the configured captioner; (None, None) when none is configured."""
    if cfg is None:
        try:
            cfg = BuildConfig.from_run(run.root)
        except (OSError, ValueError, TypeError):
            return None, None
    model = caption_model_name(cfg)
    return (model, cfg.caption_prompt_version) if model else (None, None)


def attach_captions(clips: pa.Table, run: RunDir, cfg: BuildConfig | None = None) -> pa.Table:
    """``clips`` with ``caption``, ``caption_model``, ``caption_prompt_version`` from ``_stage/captions``.

    With a captioner configured (``cfg``, else the run's run.json), only captions of its model and prompt
    version count; without one, every stored caption does. Per clip the latest one wins. Clips without a
    caption keep nulls.
    """
    rows = read_captions(run)
    if rows.num_rows == 0:
        return clips
    model, version = _configured(run, cfg)
    if model is not None:
        rows = _of_model(rows, model, version)
    latest = latest_per_clip(rows, "captioned_at")
    ids = clips["clip_id"].to_pylist()
    for name in ("caption", "caption_model", "caption_prompt_version"):
        old = clips[name].to_pylist()
        new = [latest[c][name] if c in latest else o for c, o in zip(ids, old, strict=True)]
        i = clips.schema.get_field_index(name)
        clips = clips.set_column(i, clips.schema.field(i), pa.array(new, type=pa.string()))
    return clips


class CaptionStage(ClipStage):
    """The caption stage on :class:`datakit.clips.base.ClipStage`: builds the captioner once per actor and
    captions a batch of clips; done = a caption of the configured (model, prompt version) is stored."""

    name = STAGE
    error_stage = "caption"
    rows = CAPTION_ROWS
    time_column = "captioned_at"

    @property
    def frames_per_clip(self) -> int:
        return self.cfg.caption_frames

    @property
    def max_pixels(self) -> int:
        return self.cfg.caption_max_pixels

    def of_config(self, rows: pa.Table) -> pa.Table:
        return _of_model(rows, caption_model_name(self.cfg), self.cfg.caption_prompt_version)

    def resources(self, num_gpus: int) -> Resources:
        batch = max(1, self.cfg.caption_batch_size)
        if self.cfg.captioner != "qwen2.5-vl":  # openai: I/O-bound, threads inside one actor; a batch feeds them all
            return Resources(batch_size=max(batch, self.cfg.caption_concurrency))
        if num_gpus:
            return Resources(num_actors=num_gpus, num_gpus=1, batch_size=batch)
        # one model on the CPU, using the node's cores (Ray would pin torch to one thread)
        threads = str(os.cpu_count() or 1)
        return Resources(batch_size=batch, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})

    def setup(self) -> None:
        self.captioner = make_captioner(self.cfg)

    def producer(self) -> list[str]:
        return [self.captioner.model, self.captioner.prompt_version]

    def compute(self, items: list[dict], frames: dict[str, list]) -> dict[str, dict | BaseException]:
        clips = []
        for item in items:
            clip_id, start_s, end_s = str(item["clip_id"]), float(item["start_s"]), float(item["end_s"])
            # the rate of the sampled frames gives the model its temporal positions
            rate = len(frames[clip_id]) / max(end_s - start_s, 1e-3)
            clips.append(ClipFrames(clip_id, frames[clip_id], rate, start_s, end_s))
        row = {
            "caption_model": self.captioner.model,
            "caption_prompt_version": self.captioner.prompt_version,
            "captioner": self.captioner.name,
        }
        results = caption_each(self.captioner, clips)
        return {
            clip.clip_id: result if isinstance(result, BaseException) else {**row, "caption": result}
            for clip, result in zip(clips, results, strict=True)
        }
