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

**What datakit touches.** Only what it created: its temporaries are named ``.datakit-tmp-<name>.<hex>``
(files, beside their final name), ``.datakit-new-<table>.<hex>/`` and ``.datakit-old-<table>.<hex>/``
(whole tables being swapped in), and :meth:`RunDir.clean_temporaries` removes only those names, only in
the folders datakit writes (the root, the table folders, ``_stage/*``, ``_done``, ``_plan``, ``_attempts``,
``_index``). A ``.datakit-old-<table>`` whose table is missing (killed between the two renames) is put
back, for datakit's own table names only. Any other file or folder in ``--out`` is left alone.

**Which folders a build writes to** (:meth:`RunDir.check_out_folder`): a new folder, an empty one, or the
``--out`` of an earlier build (it holds ``run.json``). A folder without ``run.json`` that holds anything
else is refused (:class:`ForeignFolderError`, naming a few of its entries), ``--overwrite`` included:
datakit never deletes or mixes into files it did not write.

**One writer at a time** (:meth:`RunDir.lock`): build, caption and filter hold an ``fcntl.flock`` on
``.datakit.lock`` (which holds the holder's pid) while they write; a second writer fails at once with
:class:`RunLockedError` naming that pid. The lock ends with its process, so ``kill -9`` leaves none behind.

**Whole runs.** Each completion marker records the files it commits with their sizes
(``"files": {"faces/<id>.parquet": 1234, ...}``), and ``_done/_global.json`` those of the tables the
global passes swap in. A resumed build voids a marker whose files are missing or of another size
(:meth:`RunDir.void_torn_markers`: the item is redone); readers (``RunDir.open``) refuse such a run with
:class:`IncompleteRunError`, naming the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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
LOCK_NAME = ".datakit.lock"
#: datakit's temporaries: files beside their final name, and tables being swapped in (see the module doc)
TMP_PREFIX = ".datakit-tmp-"
NEW_PREFIX = ".datakit-new-"
OLD_PREFIX = ".datakit-old-"
#: folders swapped in whole (replace_table, the query index): a leftover ``.datakit-old-<name>`` is restored
SWAPPED_FOLDERS = (*GLOBAL_TABLES, "splits", "_index")
#: what a run folder holds (``--overwrite`` deletes these; nothing else)
RUN_ENTRIES = (
    RECORD_NAME,
    "_done",
    "_stage",
    "_attempts",
    "_plan",
    "_index",
    "splits",
    *PER_VIDEO_TABLES,
    *GLOBAL_TABLES,
)
#: the record of the files of the tables swapped in whole (``replace_table``), for the readers' check
GLOBAL_RECORD = "_global.json"


class NotARunError(FileNotFoundError, ValueError):
    """A folder that is not a readable datakit run: missing, without ``run.json``, or with a ``run.json``
    that is not the JSON object ``datakit build`` writes. The message names the folder or the file.

    It is both a ``FileNotFoundError`` and a ``ValueError`` because the readers it replaces raised one
    or the other, and callers catch either.
    """


class IncompleteRunError(NotARunError):
    """A run whose completion records name a file that is missing or of another size (deleted, torn)."""


class ForeignFolderError(ValueError):
    """A ``--out`` folder that holds files datakit did not write and no run: a build refuses to write there."""


class RunLockedError(BlockingIOError):
    """Another datakit process (build, caption, filter) is writing to the run; the message names its pid."""


def temp_path(path: Path) -> Path:
    """A datakit temporary beside ``path`` (same folder, so the final rename is atomic)."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")


def write_atomic(table: pa.Table, path: Path) -> int:
    """Write ``table`` to ``path`` through a temporary file and a rename; returns the file's size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    pq.write_table(table, tmp, compression="zstd")
    size = tmp.stat().st_size
    os.replace(tmp, path)
    return size


def write_json_atomic(data: dict, path: Path) -> None:
    """Write JSON through a temporary file and a rename. Always valid JSON: NaN or infinity is refused
    (``ValueError``) instead of being written as the non-standard ``NaN``."""
    try:
        text = json.dumps(data, indent=2, default=str, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"not written to {path}: {exc} (a NaN or infinite value)") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def staging_folder(final: Path) -> Path:
    """A new, empty datakit temporary folder beside ``final``, to be swapped in by :func:`swap_folder`."""
    staging = final.parent / f"{NEW_PREFIX}{final.name}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    return staging


def swap_folder(staging: Path, final: Path) -> None:
    """Put the folder ``staging`` in the place of ``final`` (the old one goes only after the new is in)."""
    old = final.parent / f"{OLD_PREFIX}{final.name}.{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.glob("*.parquet"))} if folder.is_dir() else {}


class RunDir:
    """Reads and writes one run's manifests and its ``run.json`` record.

    ``RunDir(root)`` names a folder that may not exist yet (a build creates it); ``RunDir.open(root)`` is
    for readers of a finished or interrupted run and fails unless the folder holds ``run.json``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def open(cls, root: str | Path, *, verify: bool = True) -> RunDir:
        """The run in ``root``, for a reader: raises :class:`NotARunError` unless the folder holds a readable
        ``run.json``, and (``verify``) :class:`IncompleteRunError` when a committed file is missing or torn."""
        run = cls(root)
        run.record()
        if verify:
            run.verify()
        return run

    # -- who may write ---------------------------------------------------------------------------------

    def check_out_folder(self) -> None:
        """Refuse (:class:`ForeignFolderError`) a folder without ``run.json`` that holds anything datakit did
        not write; a new folder, an empty one or an earlier run's is fine."""
        if not self.root.exists() or self.has_record():
            return
        if not self.root.is_dir():
            raise ForeignFolderError(f"--out {self.root} is not a folder")
        foreign = sorted(
            p.name + ("/" if p.is_dir() else "")
            for p in self.root.iterdir()
            if p.name != LOCK_NAME and not p.name.startswith(".datakit-")
        )
        if foreign:
            shown = ", ".join(repr(n) for n in foreign[:3]) + (
                f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            )
            raise ForeignFolderError(
                f"--out {self.root} holds files that are not a datakit run ({shown}): datakit writes only into a new"
                " or empty folder or the --out of an earlier build (with run.json); choose another --out"
            )

    @contextmanager
    def lock(self, command: str) -> Iterator[RunDir]:
        """Hold the run's writer lock (``fcntl.flock`` on ``.datakit.lock``, which records this pid) while
        ``command`` writes; raises :class:`RunLockedError` at once when another process holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLockedError(self._held_by(fd)) from None
            holder = {"pid": os.getpid(), "command": command, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            yield self
        finally:
            os.close(fd)  # releases the lock (so does the end of the process, kill -9 included)

    def _held_by(self, fd: int) -> str:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            holder = {}
        if not isinstance(holder, dict) or "pid" not in holder:
            return f"{self.root} is in use by another datakit process; wait for it or stop it"
        return (
            f"{self.root} is in use by datakit pid {holder['pid']} ({holder.get('command', '?')}, started"
            f" {holder.get('started_at', '?')}); wait for it or stop it"
        )

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

    def _markers(self) -> list[Path]:
        """Every completion marker (of videos and of segments), sorted."""
        folder = self.root / "_done"
        return sorted(p for p in folder.glob("*.json") if not p.name.startswith("_")) if folder.is_dir() else []

    def done_ids(self) -> set[str]:
        """Ids of videos whose marker exists (a resumed build first voids torn ones: :meth:`void_torn_markers`)."""
        return {p.stem for p in self._markers() if "." not in p.stem}

    def done_segments(self, video_id: str) -> set[int]:
        """Numbers of the committed segments of a long video."""
        folder = self.root / "_done"
        return (
            {int(p.stem.rsplit(".s", 1)[1]) for p in folder.glob(f"{video_id}.s*.json")} if folder.is_dir() else set()
        )

    def write_segment(self, video_id: str, seg_no: int, tables: dict[str, pa.Table], summary: dict) -> None:
        """Write one segment's tables (all but ``videos``), then its marker (the segment's commit point)."""
        key = self.segment_key(video_id, seg_no)
        self._commit(key, {name: tables[name] for name in PER_VIDEO_TABLES if name != "videos"}, tables, summary)

    def segment_summary(self, video_id: str, seg_no: int) -> dict:
        """What a committed segment's marker records."""
        return json.loads(self.marker(self.segment_key(video_id, seg_no)).read_text())

    def finish_split_video(self, video_id: str, videos: pa.Table, summary: dict) -> None:
        """A long video whose segments are all committed: its ``videos`` row, then its marker."""
        self._commit(video_id, {"videos": videos}, None, summary)

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
        self._commit(video_id, {name: tables[name] for name in PER_VIDEO_TABLES}, tables, summary)

    def _commit(self, key: str, tables: dict[str, pa.Table], stage: dict[str, pa.Table] | None, summary: dict) -> None:
        """Write ``<table>/<key>.parquet`` (and ``_stage/<table>/<key>.parquet`` for the stage tables), then
        the marker, which records every file's name and size (:meth:`void_torn_markers` checks them)."""
        files: dict[str, int] = {}
        paths = [(f"{name}/{key}.parquet", t) for name, t in tables.items()]
        paths += [(f"_stage/{name}/{key}.parquet", stage[name]) for name in STAGE_TABLES] if stage else []
        for rel, table in paths:
            files[rel] = write_atomic(table, self.root / rel)
        write_json_atomic({**summary, "files": files}, self.marker(key))

    # -- is the run whole? -----------------------------------------------------------------------------

    def _inside(self, rel: object) -> Path | None:
        """``root / rel`` for a relative path that stays inside the run, else None (a crafted marker)."""
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            return None
        return self.root / rel

    def _legacy_files(self, key: str, summary: dict) -> list[str]:
        """The files a marker without ``"files"`` (datakit before 0.3.x) commits: checked for existence."""
        if "segments" in summary:  # a split video's own marker: its videos row (the segments have theirs)
            return [f"videos/{key}.parquet"]
        names = [n for n in PER_VIDEO_TABLES if n != "videos" or "." not in key]
        return [f"{n}/{key}.parquet" for n in names] + [f"_stage/{n}/{key}.parquet" for n in STAGE_TABLES]

    def _marker_problem(self, marker: Path) -> str | None:
        """What is wrong with the files a marker commits (first problem), or None."""
        try:
            summary = json.loads(marker.read_text())
        except (OSError, ValueError):
            return f"_done/{marker.name} is not readable"
        if not isinstance(summary, dict):
            return f"_done/{marker.name} is not a completion marker"
        files = summary.get("files")
        if not isinstance(files, dict):
            files = dict.fromkeys(self._legacy_files(marker.stem, summary))
        return _files_problem(self, files, prefix="")

    def void_torn_markers(self) -> list[tuple[str, str]]:
        """Delete the markers whose files are missing or torn, so that their items are redone; returns
        ``(key, problem)`` per voided marker. A torn segment also voids its video's marker."""
        voided = [(m.stem, problem) for m in self._markers() if (problem := self._marker_problem(m))]
        for key, _ in voided:
            self.marker(key).unlink(missing_ok=True)
            (self.root / "_attempts" / f"{key}.json").unlink(missing_ok=True)
            if "." in key:
                self.marker(key.split(".")[0]).unlink(missing_ok=True)
        return voided

    def verify(self) -> None:
        """Raise :class:`IncompleteRunError` when a file a marker or ``_done/_global.json`` records is missing
        or of another size; the message names the first such file."""
        problems = [p for m in self._markers() if (p := self._marker_problem(m))]
        for name, entry in sorted(self._global_record().items()):
            if not isinstance(entry, dict):
                continue
            problem = _files_problem(self, entry.get("files") or {}, prefix=f"{name}/")
            if problem and (
                entry.get("previous") is None or _files_problem(self, entry["previous"], prefix=f"{name}/")
            ):
                problems.append(problem)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise IncompleteRunError(
                f"run {self.root} is incomplete: {problems[0]}{more}; rerun `datakit build --out {self.root}`"
                " (same --src) to redo it"
            )

    def _global_record(self, *, strict: bool = True) -> dict:
        """``_done/_global.json``: per table swapped in whole, its part files and sizes (and, during a swap,
        the previous ones). Unreadable: an error for a reader (``strict``), a fresh start for a writer."""
        path = self.root / "_done" / GLOBAL_RECORD
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            if not strict:
                return {}
            raise IncompleteRunError(f"run {self.root} is incomplete: {path} is not readable ({exc})") from exc
        return record if isinstance(record, dict) else {}

    def _record_global(self, name: str, entry: dict) -> None:
        record = self._global_record(strict=False)
        record[name] = entry
        write_json_atomic(record, self.root / "_done" / GLOBAL_RECORD)

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
        """Swap in a whole table written by the global pass (old files go only after the new are in).

        Its part files and sizes go to ``_done/_global.json`` (with the old ones until the swap is done, so a
        run killed in between is still whole: :meth:`clean_temporaries` puts the old table back)."""
        final = self.root / name
        staging = staging_folder(final)
        files: dict[str, int] = {}
        for i, start in enumerate(range(0, max(table.num_rows, 1), ROWS_PER_PART)):
            part = staging / f"part-{i:05d}.parquet"
            pq.write_table(
                table.slice(start, ROWS_PER_PART), part, compression="zstd", row_group_size=ROWS_PER_GROUP.get(name)
            )
            files[part.name] = part.stat().st_size
        self._record_global(name, {"files": files, "previous": _file_sizes(final)})  # {}: there was none
        swap_folder(staging, final)
        self._record_global(name, {"files": files})

    def record_table(self, name: str) -> None:
        """Accept a table's files as they are now (a table rewritten outside :meth:`replace_table`, e.g. by
        hand): ``_done/_global.json`` records them, so readers check against these from now on."""
        self._record_global(name, {"files": _file_sizes(self.root / name)})

    def clear(self) -> None:
        """Delete every manifest, marker and record of this run (``--overwrite``); nothing else in the folder.

        Markers go first and ``run.json`` last: a clear that is killed half way leaves a run to resume."""
        for name in ("_done", *(n for n in RUN_ENTRIES if n not in ("_done", RECORD_NAME)), RECORD_NAME):
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _written_folders(self) -> list[Path]:
        """The folders datakit writes files into: the root, the run's tables and records, ``_stage/*``."""
        folders = [self.root, *(self.root / n for n in RUN_ENTRIES if n != RECORD_NAME)]
        stage = self.root / "_stage"
        folders += sorted(p for p in stage.iterdir() if p.is_dir()) if stage.is_dir() else []
        return [f for f in folders if f.is_dir() and not f.is_symlink()]

    def clean_temporaries(self) -> None:
        """Remove what a killed datakit process left: its ``.datakit-tmp-*`` files and folders in the folders
        it writes, and ``.datakit-new-*`` / ``.datakit-old-*`` tables in the root (a datakit table killed
        between the two renames of a swap is put back). Nothing else is touched."""
        if not self.root.is_dir():
            return
        for folder in self._written_folders():
            for p in folder.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    _remove(p)
        for p in self.root.iterdir():
            if p.name.startswith(NEW_PREFIX):
                _remove(p)
            elif p.name.startswith(OLD_PREFIX):
                name = p.name[len(OLD_PREFIX) :].rsplit(".", 1)[0]
                if name in SWAPPED_FOLDERS and p.is_dir() and not (self.root / name).exists():
                    os.replace(p, self.root / name)  # killed between the two renames: keep the old table
                else:
                    _remove(p)


def _files_problem(run: RunDir, files: dict, *, prefix: str) -> str | None:
    """The first recorded file (``prefix + name`` -> size, or None: existence only) that is missing or of
    another size, said in words; None when all are in place."""
    for name, size in files.items():
        rel = f"{prefix}{name}"
        path = run._inside(rel)
        if path is None:
            return f"a completion record names a file outside the run ({rel!r})"
        recorded = f" (recorded {size} bytes)" if isinstance(size, int) else ""
        try:
            actual = path.stat().st_size
        except OSError:
            return f"{rel} is missing{recorded}"
        if isinstance(size, int) and actual != size:
            return f"{rel} is torn ({actual} bytes, recorded {size})"
    return None
