"""The open_clip score stage: ``clip_score`` (image-caption) and ``aesthetic_score`` of the kept clips.

Runs only when ``BuildConfig.clip_model_dir`` names a local open_clip folder (``aesthetic_head``
optional), after the captions in the build's stage order (:mod:`datakit.passes.runner`), so that the
image-text score sees the clip's caption. The clip's middle frame goes through
:class:`datakit.clips.open_clip.ClipScorer`. Work items, commits to
``<run>/_stage/clip_scores/<batch-id>.parquet``, error rows ``errors/clip_score-<clip_id>.parquet`` (stage
``clip_score``) and resume are the :class:`datakit.clips.base.ClipStage` machinery: a killed run never
scores a clip twice, and a clip whose caption changed is scored again. :func:`attach_clip_scores` fills
the ``clips`` columns before the model-based filters (``low_clip_score`` / ``low_aesthetic``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.clips.base import ClipStage, Resources, latest_per_clip
from datakit.clips.open_clip import ClipScorer
from datakit.config import BuildConfig
from datakit.store import RunDir

__all__ = ["SCORE_ROWS", "ScoreStage", "ScoreSummary", "attach_clip_scores", "scorer_name"]

STAGE = "clip_scores"
#: pixel budget of the frame handed to open_clip (it resizes to its own 224-336 px input anyway)
FRAME_PIXELS = 640 * 360
#: clips per actor call (and per committed stage file)
BATCH_SIZE = 16
SCORE_ROWS = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("scorer", pa.string(), nullable=False),
        pa.field("caption", pa.string()),  # the caption the clip_score was computed against
        pa.field("clip_score", pa.float32()),
        pa.field("aesthetic_score", pa.float32()),
        pa.field("scored_at", pa.float64(), nullable=False),
    ]
)


def scorer_name(cfg: BuildConfig) -> str | None:
    """The name the configured scorer records (``ClipScorer.name``), or None when none is configured."""
    if cfg.clip_model_dir is None:
        return None
    return ClipScorer.name_for(cfg.clip_model_dir, cfg.aesthetic_head)


@dataclass(slots=True)
class ScoreSummary:
    """What one score stage did."""

    scorer: str | None = None
    scored: int = 0
    already: int = 0
    failed: int = 0
    seconds: float = 0.0


def _of_scorer(rows: pa.Table, scorer: str) -> pa.Table:
    return rows.filter(pc.equal(rows["scorer"], scorer))


def attach_clip_scores(clips: pa.Table, run: RunDir, cfg: BuildConfig) -> pa.Table:
    """``clips`` with ``clip_score`` / ``aesthetic_score`` from the configured scorer's stored results;
    a ``clip_score`` computed against another caption than the clip's current one is left null."""
    scorer = scorer_name(cfg)
    if scorer is None:
        return clips
    latest = latest_per_clip(_of_scorer(run.read(STAGE, SCORE_ROWS, stage=True), scorer), "scored_at")
    clip_score, aesthetic = [], []
    for clip_id, caption in zip(clips["clip_id"].to_pylist(), clips["caption"].to_pylist(), strict=True):
        row = latest.get(clip_id)
        aesthetic.append(None if row is None else row["aesthetic_score"])
        clip_score.append(None if row is None or row["caption"] != caption else row["clip_score"])
    for name, values in (("clip_score", clip_score), ("aesthetic_score", aesthetic)):
        i = clips.schema.get_field_index(name)
        clips = clips.set_column(i, clips.schema.field(i), pa.array(values, pa.float32()))
    return clips


class ScoreStage(ClipStage):
    """The score stage on :class:`datakit.clips.base.ClipStage`: loads the scorer once per actor and scores
    the middle frame of each clip; done = a score of this scorer against the clip's current caption."""

    name = STAGE
    error_stage = "clip_score"
    rows = SCORE_ROWS
    time_column = "scored_at"
    item_columns = ("caption",)

    @property
    def max_pixels(self) -> int:
        return FRAME_PIXELS

    def of_config(self, rows: pa.Table) -> pa.Table:
        return _of_scorer(rows, scorer_name(self.cfg))

    def is_done(self, clip: dict, latest: dict | None) -> bool:
        return latest is not None and latest["caption"] == clip["caption"]

    def resources(self, num_gpus: int) -> Resources:
        return Resources(num_actors=max(num_gpus, 1), num_gpus=1 if num_gpus else 0, batch_size=BATCH_SIZE)

    def setup(self) -> None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.scorer = ClipScorer(self.cfg.clip_model_dir, self.cfg.aesthetic_head, device=device)

    def producer(self) -> list[str]:
        return [self.scorer.name]

    def compute(self, items: list[dict], frames: dict[str, list]) -> dict[str, dict | BaseException]:
        ids = [str(item["clip_id"]) for item in items]
        bgr = [np.asarray(frames[clip_id][0])[:, :, ::-1] for clip_id in ids]  # RGB -> BGR
        # Ray Data hands a null string over as a float NaN: anything but a str is "no caption"
        captions = [item["caption"] if isinstance(item["caption"], str) else None for item in items]
        clip_scores, aesthetic = self.scorer.score(bgr, captions)
        return {
            clip_id: {"scorer": self.scorer.name, "caption": caption, "clip_score": cs, "aesthetic_score": aes}
            for clip_id, caption, cs, aes in zip(ids, captions, clip_scores, aesthetic, strict=True)
        }
