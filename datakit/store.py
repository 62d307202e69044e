"""The run directory: atomic Parquet writes, per-video completion markers, table reads.

Layout (``<out>/``)::

    run.json                    config, face stack, versions, counts, timings (RunDir.record())
    videos/ faces/ errors/      one Parquet file per video (<video_id>.parquet), written per video
    clips/ tracks/ identities/ reference_views/ samples/   written by the global passes (part-NNNNN.parquet)
    _stage/clips/ _stage/tracks/ _stage/crops/    per-video inputs of the global passes
    _done/<video_id>.json           completion marker, written last, after every file of the video
    _done/<video_id>.sNNNN.json     a long video's segment marker (datakit.video.segments): its faces/errors/stage files
                                    are <video_id>.sNNNN.parquet; the video's marker follows its last segment
    _plan/<video_id>.json           a long video's first pass: shots, pts map, segments (reused on resume)
    _attempts/<video_id>.json       how many workers started on the video (to give up on one that crashes)

Every file is written to a temporary name and renamed into place, so a reader (or a resumed run)
never sees half a file. A video counts as done only when its marker exists; a killed run re-does the
unmarked videos, overwriting their files under the same names, so no row is lost or duplicated.

:class:`RunDir` is the one reader of a run folder: ``RunDir.open(root)`` checks that the folder is a run
(else :class:`NotARunError`, one message for every command and library), ``record()`` reads ``run.json``,
``write_record`` / ``update_record`` replace it atomically, ``dataset`` / ``scan`` read a table's files.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

PER_VIDEO_TABLES = ("videos", "faces", "errors")
#: per-video outputs that the global passes complete (clips get filters and captions, tracks identities)
STAGE_TABLES = ("clips", "tracks", "crops")
GLOBAL_TABLES = ("clips", "tracks", "identities", "reference_views", "samples")
ROWS_PER_PART = 100_000
# Tables that carry image bytes get small row groups: a trainer reading one sample's crops reads one
# row group (a few MB), not a whole part of up to 100k rows (GBs of JPEGs).
ROWS_PER_GROUP = {"samples": 256, "reference_views": 1024}
RECORD_NAME = "run.json"


class NotARunError(FileNotFoundError, ValueError):
    """A folder that is not a readable datakit run: missing, without ``run.json``, or with a ``run.json``
    that is not the JSON object ``datakit build`` writes. The message names the folder or the file.

    It is both a ``FileNotFoundError`` and a ``ValueError`` because the readers it replaces raised one
    or the other, and callers catch either.
    """


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_json_atomic(data: dict, path: Path) -> None:
    """Write JSON through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class RunDir:
    """Reads and writes one run's manifests and its ``run.json`` record.

    ``RunDir(root)`` names a folder that may not exist yet (a build creates it); ``RunDir.open(root)`` is
    for readers of a finished or interrupted run and fails unless the folder holds ``run.json``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def open(cls, root: str | Path) -> RunDir:
        """The run in ``root``; raises :class:`NotARunError` unless the folder holds ``run.json``."""
        run = cls(root)
        run._require_record()
        return run

    # -- run.json --------------------------------------------------------------------------------------

    @property
    def record_path(self) -> Path:
        """Where the run's record (``run.json``) lives."""
        return self.root / RECORD_NAME

    def has_record(self) -> bool:
        """Whether the folder holds a ``run.json`` (a build has started in it)."""
        return self.record_path.is_file()

    def _require_record(self) -> None:
        if not self.has_record():
            raise NotARunError(
                f"{self.root} is not a datakit run (no {RECORD_NAME}): pass the --out folder of a"
                " `datakit build`, or run `datakit build` first"
            )

    def record(self) -> dict:
        """``run.json`` as a dict (read again on every call: a build or ``datakit filter`` may change it)."""
        self._require_record()
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError) as exc:
            raise NotARunError(f"{self.record_path} is not a readable datakit run record ({exc})") from exc
        if not isinstance(record, dict):
            raise NotARunError(f"{self.record_path} is not a datakit run record (a JSON object)")
        return record

    def write_record(self, record: dict) -> None:
        """Replace ``run.json`` atomically (a reader sees the old or the new record, never half of one)."""
        write_json_atomic(record, self.record_path)

    def update_record(self, **changes: object) -> dict:
        """Set top-level keys of ``run.json`` (read, change, atomic write); returns the new record."""
        record = self.record()
        record.update(changes)
        self.write_record(record)
        return record

    # -- tables ----------------------------------------------------------------------------------------

    def files(self, name: str, *, stage: bool = False) -> list[Path]:
        """The Parquet files of a table (of its per-video stage inputs with ``stage``), sorted by name."""
        folder = self.root / ("_stage" if stage else "") / name
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    def dataset(self, name: str) -> ds.Dataset | None:
        """A pyarrow dataset over a table's files (for filtered, column-pruned reads); None without files."""
        files = self.files(name)
        return ds.dataset([str(p) for p in files], format="parquet") if files else None

    def scan(self, name: str, columns: list[str] | None = None, filter: ds.Expression | None = None) -> pa.Table | None:
        """The rows of a table matching ``filter``, with those of ``columns`` it has (an older run may lack
        a newer column); None when the table has no files."""
        dset = self.dataset(name)
        if dset is None:
            return None
        if columns is not None:
            columns = [c for c in columns if c in dset.schema.names]
        return dset.to_table(columns=columns, filter=filter)

    def count_rows(self, name: str) -> int:
        """How many rows a table holds (0 without files), from the Parquet footers."""
        dset = self.dataset(name)
        return dset.count_rows() if dset is not None else 0

    # -- per-video commits -----------------------------------------------------------------------------

    def marker(self, video_id: str) -> Path:
        """The completion marker of a video (or of a segment, by its :meth:`segment_key`)."""
        return self.root / "_done" / f"{video_id}.json"

    def segment_key(self, video_id: str, seg_no: int) -> str:
        """The file stem of a long video's segment: ``<video_id>.sNNNN``."""
        return f"{video_id}.s{seg_no:04d}"

    def plan_path(self, video_id: str) -> Path:
        """Where a long video's first pass (shots, pts map, segments) is kept for resumes."""
        return self.root / "_plan" / f"{video_id}.json"

    def done_ids(self) -> set[str]:
        """Ids of videos whose every file is in place."""
        folder = self.root / "_done"
        return {p.stem for p in folder.glob("*.json") if "." not in p.stem} if folder.is_dir() else set()

    def done_segments(self, video_id: str) -> set[int]:
        """Numbers of the committed segments of a long video."""
        folder = self.root / "_done"
        return (
            {int(p.stem.rsplit(".s", 1)[1]) for p in folder.glob(f"{video_id}.s*.json")} if folder.is_dir() else set()
        )

    def write_segment(self, video_id: str, seg_no: int, tables: dict[str, pa.Table], summary: dict) -> None:
        """Write one segment's tables (all but ``videos``), then its marker (the segment's commit point)."""
        key = self.segment_key(video_id, seg_no)
        for name in PER_VIDEO_TABLES:
            if name != "videos":
                write_atomic(tables[name], self.root / name / f"{key}.parquet")
        for name in STAGE_TABLES:
            write_atomic(tables[name], self.root / "_stage" / name / f"{key}.parquet")
        write_json_atomic(summary, self.marker(key))

    def segment_summary(self, video_id: str, seg_no: int) -> dict:
        """What a committed segment's marker records."""
        return json.loads(self.marker(self.segment_key(video_id, seg_no)).read_text())

    def finish_split_video(self, video_id: str, videos: pa.Table, summary: dict) -> None:
        """A long video whose segments are all committed: its ``videos`` row, then its marker."""
        write_atomic(videos, self.root / "videos" / f"{video_id}.parquet")
        write_json_atomic(summary, self.marker(video_id))

    def count_attempt(self, video_id: str) -> int:
        """Record that a worker starts on this video; returns how many times one has (this one included).

        A video whose worker keeps dying (a native crash in a decoder or model) is seen again on every
        retry and resume; the count lets the worker give up on it instead of crashing forever.
        """
        path = self.root / "_attempts" / f"{video_id}.json"
        count = json.loads(path.read_text())["attempts"] + 1 if path.exists() else 1
        write_json_atomic({"attempts": count}, path)
        return count

    def write_video(self, video_id: str, tables: dict[str, pa.Table], summary: dict) -> None:
        """Write one video's tables, then its completion marker (the commit point)."""
        for name in PER_VIDEO_TABLES:
            write_atomic(tables[name], self.root / name / f"{video_id}.parquet")
        for name in STAGE_TABLES:
            write_atomic(tables[name], self.root / "_stage" / name / f"{video_id}.parquet")
        write_json_atomic(summary, self.marker(video_id))

    def read(self, name: str, schema: pa.Schema | None = None, *, stage: bool = False) -> pa.Table:
        """All files of a table concatenated (empty table with ``schema`` when there are none)."""
        files = self.files(name, stage=stage)
        if not files:
            if schema is None:
                raise FileNotFoundError(f"no {name} table in {self.root}")
            return schema.empty_table()
        tables = [pq.read_table(p) for p in files]
        return (
            pa.concat_tables(tables, promote_options="default")
            if schema is None
            else pa.concat_tables([t.cast(schema) for t in tables])
        )

    def replace_table(self, name: str, table: pa.Table) -> None:
        """Swap in a whole table written by the global pass (old files go only after the new are in)."""
        final = self.root / name
        staging = self.root / f".{name}.{uuid.uuid4().hex[:8]}.new"
        staging.mkdir(parents=True)
        for i, start in enumerate(range(0, max(table.num_rows, 1), ROWS_PER_PART)):
            part = table.slice(start, ROWS_PER_PART)
            pq.write_table(
                part, staging / f"part-{i:05d}.parquet", compression="zstd", row_group_size=ROWS_PER_GROUP.get(name)
            )
        old = self.root / f".{name}.{uuid.uuid4().hex[:8]}.old"
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        """Delete every manifest, marker and record of this run (``--overwrite``)."""
        names = {
            RECORD_NAME,
            "_done",
            "_stage",
            "_attempts",
            "_plan",
            "_index",
            "splits",
            *PER_VIDEO_TABLES,
            *GLOBAL_TABLES,
        }
        for name in names:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def clean_temporaries(self) -> None:
        """Remove leftovers of a killed run (temporary files and half-swapped table folders)."""
        if not self.root.is_dir():
            return
        for p in self.root.rglob(".*.tmp"):
            p.unlink(missing_ok=True)
        for p in self.root.glob(".*.new"):
            shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(".*.old"):
            name = p.name[1:].split(".")[0]
            if not (self.root / name).exists():
                os.replace(p, self.root / name)  # killed between the two renames: keep the old table
            else:
                shutil.rmtree(p, ignore_errors=True)
