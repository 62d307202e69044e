"""The caption stage: caption the kept clips of a run, resumable per clip, on a Ray Data actor pool.

Inputs: ``<run>/clips`` (the final table the global clip pass writes: ``drop_reason`` null = kept) and
``videos`` (paths relative to the source root). A clip is captioned when it is kept and has no caption
yet from the same (model, prompt version). Results go, a small batch at a time, to
``<run>/_stage/captions/<batch-id>.parquet`` through an atomic rename, so a killed run loses at most the
batches in flight and never captions a clip twice. A clip that cannot be captioned (decode error, server
error after the retries, timeout) becomes ``errors/caption-<clip_id>.parquet`` (stage ``caption``),
removed again when a later attempt succeeds; the run goes on. :func:`attach_captions` fills the
``clips`` caption columns from the stage folder (the global clip pass calls it).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from datakit import schema
from datakit.clips.captions.base import (
    NOT_CONFIGURED_HINT,
    caption_each,
    caption_model_name,
    make_captioner,
)
from datakit.clips.frames import frames_for_items
from datakit.config import BuildConfig
from datakit.store import RunDir, write_atomic

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
    rows = rows.take(pc.sort_indices(rows, [("captioned_at", "ascending")]))
    columns = ["clip_id", "caption", "caption_model", "caption_prompt_version"]
    latest = {r["clip_id"]: r for r in rows.select(columns).to_pylist()}
    ids = clips["clip_id"].to_pylist()
    for name in ("caption", "caption_model", "caption_prompt_version"):
        old = clips[name].to_pylist()
        new = [latest[c][name] if c in latest else o for c, o in zip(ids, old, strict=True)]
        i = clips.schema.get_field_index(name)
        clips = clips.set_column(i, clips.schema.field(i), pa.array(new, type=pa.string()))
    return clips


def _error_path(run: RunDir, clip_id: str) -> Path:
    return run.root / "errors" / f"caption-{clip_id}.parquet"


def _write_error(run: RunDir, clip_id: str, video_id: str | None, exc: BaseException) -> None:
    error_type = getattr(exc, "error_type", None) or type(exc).__name__
    message = getattr(exc, "message", None) or str(exc) or repr(exc)
    row = {
        "stage": "caption",
        "item": clip_id,
        "video_id": video_id,
        "error_type": error_type,
        "message": message,
        "pipeline_version": schema.PIPELINE_VERSION,
    }
    write_atomic(pa.Table.from_pylist([row], schema=schema.ERRORS), _error_path(run, clip_id))


class CaptionWorker:
    """Ray Data actor: builds the captioner once, captions one batch of clips per call."""

    cfg: BuildConfig  # bound per run by ``_worker_class`` (config travels with the class, as in pipelines.build)

    def __init__(self) -> None:
        self.captioner = make_captioner(self.cfg)
        self.run = RunDir(self.cfg.out)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["clip_id"])
        items = [{k: batch[k][i] for k in batch} for i in range(n)]
        decoded = frames_for_items(items, self.cfg.caption_frames, self.cfg.caption_max_pixels)
        return self.caption_batch(items, decoded)

    def caption_batch(self, items: list[dict], decoded: dict[str, object]) -> dict:
        from datakit.clips.captions.base import ClipFrames

        results: dict[str, str | BaseException] = {}
        ready = []
        for item in items:
            frames = decoded[str(item["clip_id"])]
            if isinstance(frames, BaseException):
                results[str(item["clip_id"])] = frames
                continue
            duration = max(float(item["end_s"]) - float(item["start_s"]), 1e-3)
            ready.append(
                ClipFrames(
                    str(item["clip_id"]), frames, len(frames) / duration, float(item["start_s"]), float(item["end_s"])
                )
            )
        if ready:
            for clip, result in zip(ready, caption_each(self.captioner, ready), strict=True):
                results[clip.clip_id] = result
        ok = [(cid, r) for cid, r in results.items() if isinstance(r, str)]
        if ok:
            now = time.time()
            table = pa.Table.from_pylist(
                [
                    {
                        "clip_id": cid,
                        "caption": text,
                        "caption_model": self.captioner.model,
                        "caption_prompt_version": self.captioner.prompt_version,
                        "captioner": self.captioner.name,
                        "captioned_at": now,
                    }
                    for cid, text in ok
                ],
                schema=CAPTION_ROWS,
            )
            key = "|".join([self.captioner.model, self.captioner.prompt_version, *sorted(c for c, _ in ok)])
            batch_id = f"{int(now * 1000):013d}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
            write_atomic(table, self.run.root / "_stage" / STAGE / f"{batch_id}.parquet")  # the commit point
            for cid, _ in ok:
                _error_path(self.run, cid).unlink(missing_ok=True)
        video_of = {str(i["clip_id"]): str(i["video_id"]) for i in items}
        out: dict[str, list] = {"clip_id": [], "status": [], "error": []}
        for cid, result in results.items():
            failed = isinstance(result, BaseException)
            if failed:
                _write_error(self.run, cid, video_of.get(cid), result)
            out["clip_id"].append(cid)
            out["status"].append("failed" if failed else "ok")
            out["error"].append(f"{type(result).__name__}: {result}" if failed else "")
        return out


def pending_clips(run: RunDir, cfg: BuildConfig) -> tuple[list[dict], int, int]:
    """(clips to caption as work items, kept clips, kept clips already captioned by this model/prompt)."""
    model = caption_model_name(cfg)
    if not (run.root / "clips").is_dir():
        raise FileNotFoundError(f"{run.root}: no clips table yet; run `datakit build` on it first")
    clips = run.read("clips", schema.CLIPS)
    kept = clips.filter(pc.is_null(clips["drop_reason"]))
    rows = read_captions(run)
    done = set(_of_model(rows, model, cfg.caption_prompt_version)["clip_id"].to_pylist())
    videos = run.read("videos", schema.VIDEOS).select(["video_id", "path", "fps"]).to_pylist()
    videos = {r["video_id"]: r for r in videos}
    src = Path(cfg.src)
    items, already = [], 0
    for c in kept.select(["clip_id", "video_id", "start_frame", "end_frame", "start_s", "end_s"]).to_pylist():
        if c["clip_id"] in done:
            already += 1
            continue
        video = videos.get(c["video_id"], {})
        items.append(
            {
                **c,
                "video_path": str(src / video.get("path", "")),
                "fps": float(video.get("fps") or 25.0),
            }
        )
    items.sort(key=lambda r: (r["video_path"], r["start_frame"]))
    return items, kept.num_rows, already
