"""The open_clip score stage: ``clip_score`` (image-caption) and ``aesthetic_score`` of the kept clips.

Runs only when ``BuildConfig.clip_model_dir`` names a local open_clip folder (``aesthetic_head``
optional), after captioning, so that the image-text score sees the clip's caption. The clip's middle
frame goes through :class:`datakit.video.quality.ClipScorer` on a Ray Data actor pool (one actor per GPU
when the cluster has GPUs, else one CPU actor). Like captions, results are committed a batch at a time
to ``<run>/_stage/clip_scores/<batch-id>.parquet`` (atomic rename): a killed run never scores a clip
twice, and a clip whose caption changed is scored again. :func:`attach_clip_scores` fills the ``clips``
columns (the global clip pass calls it, before the filters, so ``low_clip_score`` / ``low_aesthetic``
act on them). A clip that cannot be decoded becomes an ``errors`` row (stage ``clip_score``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit import schema
from datakit.config import BuildConfig
from datakit.store import RunDir, write_atomic

__all__ = ["ScoreSummary", "ScoreWorker", "attach_clip_scores", "pending_score_items", "scorer_name"]

STAGE = "clip_scores"
#: pixel budget of the frame handed to open_clip (it resizes to its own 224-336 px input anyway)
FRAME_PIXELS = 640 * 360
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
    from datakit.video.quality import ClipScorer

    return ClipScorer.name_for(cfg.clip_model_dir, cfg.aesthetic_head)


@dataclass(slots=True)
class ScoreSummary:
    scorer: str | None = None
    scored: int = 0
    already: int = 0
    failed: int = 0
    seconds: float = 0.0


def _read(run: RunDir, scorer: str) -> pa.Table:
    rows = run.read(STAGE, SCORE_ROWS, stage=True)
    rows = rows.filter(pc.equal(rows["scorer"], scorer))
    return rows.take(pc.sort_indices(rows, [("scored_at", "ascending")]))


def _latest(rows: pa.Table) -> dict[str, dict]:
    return {r["clip_id"]: r for r in rows.to_pylist()}  # sorted by time: the last one wins


def attach_clip_scores(clips: pa.Table, run: RunDir, cfg: BuildConfig) -> pa.Table:
    """``clips`` with ``clip_score`` / ``aesthetic_score`` from the configured scorer's stored results;
    a ``clip_score`` computed against another caption than the clip's current one is left null."""
    scorer = scorer_name(cfg)
    if scorer is None:
        return clips
    latest = _latest(_read(run, scorer))
    clip_score, aesthetic = [], []
    for clip_id, caption in zip(clips["clip_id"].to_pylist(), clips["caption"].to_pylist(), strict=True):
        row = latest.get(clip_id)
        aesthetic.append(None if row is None else row["aesthetic_score"])
        clip_score.append(None if row is None or row["caption"] != caption else row["clip_score"])
    for name, values in (("clip_score", clip_score), ("aesthetic_score", aesthetic)):
        i = clips.schema.get_field_index(name)
        clips = clips.set_column(i, clips.schema.field(i), pa.array(values, pa.float32()))
    return clips


def pending_score_items(run: RunDir, cfg: BuildConfig, scorer: str) -> tuple[list[dict], int]:
    clips = run.read("clips", schema.CLIPS)
    kept = clips.filter(pc.is_null(clips["drop_reason"]))
    latest = _latest(_read(run, scorer))
    video_rows = run.read("videos", schema.VIDEOS).select(["video_id", "path", "fps"]).to_pylist()
    videos = {r["video_id"]: r for r in video_rows}
    items, already = [], 0
    columns = ["clip_id", "video_id", "start_frame", "end_frame", "start_s", "end_s", "caption"]
    for c in kept.select(columns).to_pylist():
        row = latest.get(c["clip_id"])
        if row is not None and row["caption"] == c["caption"]:
            already += 1
            continue
        video = videos.get(c["video_id"], {})
        items.append({**c, "video_path": str(Path(cfg.src) / video.get("path", "")), "fps": video.get("fps") or 25.0})
    items.sort(key=lambda r: (r["video_path"], r["start_frame"]))
    return items, already


class ScoreWorker:
    """Ray Data actor: loads the scorer once, scores the middle frame of each clip of a batch."""

    cfg: BuildConfig  # bound per run by a subclass (the config travels with the class)

    def __init__(self) -> None:
        import torch

        from datakit.video.quality import ClipScorer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.scorer = ClipScorer(self.cfg.clip_model_dir, self.cfg.aesthetic_head, device=device)
        self.run = RunDir(self.cfg.out)

    def __call__(self, batch: dict) -> dict:
        from datakit.clips.frames import frames_for_items

        items = [{k: batch[k][i] for k in batch} for i in range(len(batch["clip_id"]))]
        decoded = frames_for_items(items, 1, FRAME_PIXELS)
        ok = [i for i in items if not isinstance(decoded[str(i["clip_id"])], BaseException)]
        status = {str(i["clip_id"]): "ok" for i in ok}
        if ok:
            frames = [np.asarray(decoded[str(i["clip_id"])][0])[:, :, ::-1] for i in ok]  # RGB -> BGR
            # Ray Data hands a null string over as a float NaN: anything but a str is "no caption"
            captions = [i["caption"] if isinstance(i["caption"], str) else None for i in ok]
            clip_scores, aesthetic = self.scorer.score(frames, captions)
            now = time.time()
            table = pa.Table.from_pylist(
                [
                    {
                        "clip_id": str(i["clip_id"]),
                        "scorer": self.scorer.name,
                        "caption": caption,
                        "clip_score": cs,
                        "aesthetic_score": aes,
                        "scored_at": now,
                    }
                    for i, caption, cs, aes in zip(ok, captions, clip_scores, aesthetic, strict=True)
                ],
                schema=SCORE_ROWS,
            )
            key = "|".join([self.scorer.name, *sorted(status)])
            batch_id = f"{int(now * 1000):013d}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
            write_atomic(table, self.run.root / "_stage" / STAGE / f"{batch_id}.parquet")  # the commit point
        for item in items:
            clip_id = str(item["clip_id"])
            error_path = self.run.root / "errors" / f"clip_score-{clip_id}.parquet"
            if clip_id in status:
                error_path.unlink(missing_ok=True)
                continue
            status[clip_id] = "failed"
            exc = decoded[clip_id]
            row = {
                "stage": "clip_score",
                "item": clip_id,
                "video_id": str(item["video_id"]),
                "error_type": getattr(exc, "error_type", None) or type(exc).__name__,
                "message": getattr(exc, "message", None) or str(exc) or repr(exc),
                "pipeline_version": schema.PIPELINE_VERSION,
            }
            write_atomic(pa.Table.from_pylist([row], schema=schema.ERRORS), error_path)
        return {"clip_id": list(status), "status": list(status.values())}
