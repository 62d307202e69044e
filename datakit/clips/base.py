"""One base for the resumable per-clip stages (captions, open_clip scores), in the spirit of datatrove's
``BaseFilter``: a subclass says what to compute for a batch of clips and which clips are still pending;
:class:`ClipStage` does everything else the same way for every stage.

What the base does:

- **pending work**: the kept clips without a stored result of this configuration (``is_done``), as work
  items that carry the clip's span and its video's path and frame rate, sorted so that each video is
  decoded front to back once per batch;
- **frames**: decoded per batch (:func:`datakit.clips.frames.frames_for_items`); a clip whose frames cannot
  be decoded fails alone;
- **commit**: the rows of a batch go to ``<run>/_stage/<name>/<batch-id>.parquet`` through an atomic
  rename, so a killed run loses at most the batches in flight and never computes a clip twice; the batch
  id is the time (ms) and a hash of the producer and the clip ids, so ids sort by time and never collide;
- **errors**: a clip that fails becomes ``errors/<error_stage>-<clip_id>.parquet`` (stage
  ``error_stage``), removed again when a later attempt succeeds; the run goes on;
- **resume**: the latest stored row per clip (by ``time_column``) is what counts.

Executors (the Ray pool in :mod:`pipelines.pools`) run a stage's class as an actor with the run's config
bound as a class attribute; the model loads once per actor (``setup``), never in the driver that only
plans the work.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from datakit import schema
from datakit.clips.frames import frames_for_items
from datakit.config import BuildConfig
from datakit.paths import UnsafePathError, inside_root
from datakit.store import RunDir, write_atomic

#: the clip columns every work item carries (where the clip lies in its video)
SPAN_COLUMNS = ("clip_id", "video_id", "start_frame", "end_frame", "start_s", "end_s")


@dataclass(frozen=True, slots=True)
class Resources:
    """What the actors of a stage need and how many run; an executor maps this onto its own runtime."""

    num_actors: int = 1
    num_gpus: int = 0  #: per actor
    batch_size: int = 1  #: clips per call, and so per committed stage file
    env: dict[str, str] = field(default_factory=dict)  #: environment variables of the actor processes


def latest_per_clip(rows: pa.Table, time_column: str) -> dict[str, dict]:
    """clip_id -> its latest stored row (by ``time_column``: a later attempt replaces an earlier one)."""
    rows = rows.take(pc.sort_indices(rows, [(time_column, "ascending")]))
    return {r["clip_id"]: r for r in rows.to_pylist()}


def kept_clips(clips: pa.Table) -> pa.Table:
    """The clips no filter dropped (``drop_reason`` null)."""
    return clips.filter(pc.is_null(clips["drop_reason"]))


class ClipStage:
    """Base of a resumable per-clip stage; see the module docstring for what it does.

    A subclass sets ``name`` (the folder ``_stage/<name>``), ``error_stage`` (``errors.stage`` and the
    error file prefix), ``rows`` (its stage table, ``clip_id`` first) with ``time_column`` (when a row was
    made) and ``item_columns`` (clip columns its work items need beyond the span), and implements
    ``of_config``, ``setup``, ``producer`` and ``compute`` (and ``is_done`` / ``resources`` when the
    defaults do not fit).
    """

    name: ClassVar[str]
    error_stage: ClassVar[str]
    rows: ClassVar[pa.Schema]
    time_column: ClassVar[str]
    item_columns: ClassVar[tuple[str, ...]] = ()
    #: the run's config: given to the constructor (driver), or bound to the class by the executor (actors)
    cfg: BuildConfig

    def __init__(self, cfg: BuildConfig | None = None) -> None:
        if cfg is not None:
            self.cfg = cfg
        self.run = RunDir(self.cfg.out)
        self._ready = False

    # -- what a subclass says ----------------------------------------------------------------------------

    @property
    def frames_per_clip(self) -> int:
        """How many frames of each clip ``compute`` gets."""
        return 1

    @property
    def max_pixels(self) -> int:
        """Pixel budget of each decoded frame (shrunk to fit, never enlarged)."""
        raise NotImplementedError

    def of_config(self, rows: pa.Table) -> pa.Table:
        """The stored rows made by this stage's configuration (model, prompt version, ...)."""
        raise NotImplementedError

    def is_done(self, clip: dict, latest: dict | None) -> bool:
        """Whether ``clip`` needs no new result, given its latest stored row of this configuration."""
        return latest is not None

    def resources(self, num_gpus: int) -> Resources:
        """What the actors need on a cluster with ``num_gpus`` GPUs."""
        return Resources()

    def setup(self) -> None:
        """Load the model; runs once per process, before its first batch."""

    def producer(self) -> list[str]:
        """What names the model and settings in batch ids (after ``setup``)."""
        raise NotImplementedError

    def compute(self, items: list[dict], frames: dict[str, list]) -> dict[str, dict | BaseException]:
        """Per clip id of ``items``: the fields of its stage row (without ``clip_id`` and ``time_column``),
        or the exception that stopped it. ``frames``: per clip id, its decoded RGB frames."""
        raise NotImplementedError

    # -- driver side -------------------------------------------------------------------------------------

    def stored(self) -> dict[str, dict]:
        """clip_id -> the latest stored row of this configuration."""
        rows = self.run.read(self.name, self.rows, stage=True)
        return latest_per_clip(self.of_config(rows), self.time_column)

    def pending(self, kept: pa.Table) -> tuple[list[dict], int]:
        """(work items of the ``kept`` clips still to compute, how many kept clips are done already)."""
        latest = self.stored()
        videos = self.run.read("videos", schema.VIDEOS).select(["video_id", "path", "fps"]).to_pylist()
        videos = {r["video_id"]: r for r in videos}
        src = Path(self.cfg.src)
        items, already = [], 0
        for clip in kept.select([*SPAN_COLUMNS, *self.item_columns]).to_pylist():
            if self.is_done(clip, latest.get(clip["clip_id"])):
                already += 1
                continue
            video = videos.get(clip["video_id"], {})
            try:  # a crafted run's path must not reach outside --src (datakit.paths)
                path, path_error = str(inside_root(src, video.get("path", ""))), ""
            except UnsafePathError as exc:
                path, path_error = "", str(exc)
            items.append({**clip, "video_path": path, "path_error": path_error, "fps": float(video.get("fps") or 25.0)})
        items.sort(key=lambda r: (r["video_path"], r["start_frame"]))
        return items, already

    # -- actor side --------------------------------------------------------------------------------------

    def __call__(self, batch: dict) -> dict:
        """Ray Data ``map_batches`` form: a batch of work items (columns) -> ``clip_id``, ``status``
        (``ok`` / ``failed``) and ``error`` per clip."""
        return self.process([{k: batch[k][i] for k in batch} for i in range(len(batch["clip_id"]))])

    def process(self, items: list[dict]) -> dict:
        """Compute, commit and report one batch of work items."""
        if not self._ready:
            self.setup()
            self._ready = True
        frames = frames_for_items(items, self.frames_per_clip, self.max_pixels)
        results: dict[str, dict | BaseException] = {cid: f for cid, f in frames.items() if isinstance(f, BaseException)}
        ready = [item for item in items if str(item["clip_id"]) not in results]
        if ready:
            results.update(self.compute(ready, frames))
        done = {cid: row for cid, row in results.items() if not isinstance(row, BaseException)}
        if done:
            self._commit(done)
        return self._report(items, results)

    def _commit(self, done: dict[str, dict]) -> None:
        now = time.time()
        table = pa.Table.from_pylist(
            [{**row, "clip_id": cid, self.time_column: now} for cid, row in done.items()], schema=self.rows
        )
        key = "|".join([*self.producer(), *sorted(done)])
        batch_id = f"{int(now * 1000):013d}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        write_atomic(table, self.run.root / "_stage" / self.name / f"{batch_id}.parquet")  # the commit point
        for cid in done:
            self._error_path(cid).unlink(missing_ok=True)

    def _report(self, items: list[dict], results: dict[str, dict | BaseException]) -> dict:
        video_of = {str(item["clip_id"]): str(item["video_id"]) for item in items}
        out: dict[str, list] = {"clip_id": [], "status": [], "error": []}
        for cid, result in results.items():
            failed = isinstance(result, BaseException)
            if failed:
                self._write_error(cid, video_of.get(cid), result)
            out["clip_id"].append(cid)
            out["status"].append("failed" if failed else "ok")
            out["error"].append(f"{type(result).__name__}: {result}" if failed else "")
        return out

    def _error_path(self, clip_id: str) -> Path:
        """The error file of a clip, named by a hash of its id (a manifest string never names a file)."""
        digest = hashlib.sha1(clip_id.encode()).hexdigest()[:16]
        return self.run.root / "errors" / f"{self.error_stage}-{digest}.parquet"

    def _write_error(self, clip_id: str, video_id: str | None, exc: BaseException) -> None:
        row = {
            "stage": self.error_stage,
            "item": clip_id,
            "video_id": video_id,
            "error_type": getattr(exc, "error_type", None) or type(exc).__name__,
            "message": getattr(exc, "message", None) or str(exc) or repr(exc),
            "pipeline_version": schema.PIPELINE_VERSION,
        }
        write_atomic(pa.Table.from_pylist([row], schema=schema.ERRORS), self._error_path(clip_id))
