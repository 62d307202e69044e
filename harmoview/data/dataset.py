"""Training data over datakit runs: an index of usable samples and a sharded, resumable batch stream.

:class:`SampleIndex` reads the ``samples`` table of one or several ``datakit build`` runs (joined with
``clips`` for the frame range and ``videos`` for fps and size) without its crop bytes, decides each
sample's bucket and frames, and counts what it leaves out and why. :class:`TrainDataset` turns it into
one endless, deterministic, resumable stream of whole batches per rank (ranks share no sample within an
epoch; data-loader workers take turns on its batches). A sample that cannot be read at load time is
skipped and reported in its batch's ``skipped``; :class:`SampleReader` loads one sample (for the cache).

A sample's ``video_path`` is manifest content: it must be a relative path that stays inside the run's video
root (:func:`datakit.paths.inside_root`). One that does not (absolute, ``..``, a link out of the root) is
left out as ``unsafe_video_path``, with a message naming the sample and the path in ``SampleIndex.problems``;
nothing outside the root is opened or even looked at.

    index = SampleIndex.open([Path("runs/a")], DataConfig(views=("frontal",)))
    loader = DataLoader(TrainDataset(index, rank, world_size), batch_size=None, num_workers=4)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from datakit.paths import UnsafePathError, inside_root
from datakit.store import IncompleteRunError, NotARunError, RunDir
from harmoview.data.buckets import Bucket, DataConfig, choose_bucket, frame_stride, window
from harmoview.data.video_io import SampleError, decode_crop, read_frames, resize_center_crop
from harmoview.model.config import VIEW_SLOTS

__all__ = [
    "Bucket",
    "DataConfig",
    "LoadedSample",
    "SampleEntry",
    "SampleError",
    "SampleIndex",
    "SampleReader",
    "TrainDataset",
    "collate",
]

# Parquet leaf columns the index reads: the nested paths select a reference's view but never its crop.
_INDEX_COLUMNS = [
    "sample_id",
    "clip_id",
    "video_id",
    "video_path",
    "caption",
    "identities.list.element.identity_id",
    "identities.list.element.track_ids.list.element",
    "identities.list.element.references.list.element.view",
]


@dataclass(frozen=True, slots=True, eq=False)
class SampleEntry:
    """One usable sample: where its pixels are, which frames and identities it trains on, at what shape."""

    run: int  # position of its run in the manifests list
    sample_id: str
    video_path: Path
    clip_frames: tuple[int, int]  # [start_frame, end_frame) of the clip, source frame numbers
    stride: float  # source frames per sampled frame
    bucket: Bucket
    caption: str | None
    identity_ids: tuple[str, ...]  # the identities used, main subject first
    identity_rows: tuple[int, ...]  # their positions in the sample's `identities` list
    present: np.ndarray  # (N, S) bool: which view slots (VIEW_SLOTS order) have a reference loaded
    file: str  # samples Parquet file, row group and row: where the crops are read at load time
    row_group: int
    row: int
    focus_frame: int | None = None  # middle of the main subject's tracks (source frame), None = clip middle

    @property
    def num_identities(self) -> int:
        """Identities this sample trains on."""
        return len(self.identity_ids)

    @property
    def frame_indices(self) -> list[int]:
        """Source frame numbers of the ``bucket.num_frames`` frames, centred on the main subject's time on screen."""
        return window(*self.clip_frames, self.bucket.num_frames, self.stride, self.focus_frame)


#: At most this many left-out samples are described one by one in ``SampleIndex.problems`` (all are counted).
MAX_PROBLEMS = 20


class SampleIndex:
    """The usable samples of one or several datakit runs, and why the others were left out."""

    def __init__(
        self,
        config: DataConfig,
        runs: list[Path],
        entries: list[SampleEntry],
        left_out: Counter,
        problems: list[str] | None = None,
    ) -> None:
        self.config = config
        self.runs = runs
        self.entries = entries
        self.left_out: dict[str, int] = dict(left_out)
        #: one line per sample left out for a problem with the run itself (an unsafe ``video_path``), naming
        #: the sample and the path; the first ``MAX_PROBLEMS`` of them
        self.problems: list[str] = list(problems or [])
        self.num_null_captions = sum(e.caption is None for e in entries)  # of the usable samples

    def __len__(self) -> int:
        return len(self.entries)

    def summary(self) -> dict:
        """Counts for logs and the run summary."""
        buckets = Counter(f"{b.num_frames}x{b.height}x{b.width}" for b in (e.bucket for e in self.entries))
        return {
            "usable": len(self),
            "left_out": self.left_out,
            "null_captions": self.num_null_captions,
            "buckets": dict(sorted(buckets.items())),
        }

    @classmethod
    def open(
        cls, manifests: Sequence[Path], config: DataConfig, video_roots: Sequence[Path | None] | None = None
    ) -> SampleIndex:
        """Index the runs ``manifests``; ``video_roots[i]`` (when not None) replaces run i's recorded ``src``.

        The default video root is ``config.src`` of the run's ``run.json``: used as is when absolute,
        relative to the current directory otherwise (``datakit build`` records it as typed).
        """
        roots = list(video_roots) if video_roots is not None else [None] * len(manifests)
        if len(roots) != len(manifests):
            raise ValueError(f"{len(roots)} video roots for {len(manifests)} manifests: give one per run (or none)")
        if not manifests:
            raise ValueError("no manifests given: pass at least one datakit run directory")
        entries: list[SampleEntry] = []
        left_out: Counter = Counter()
        problems: list[str] = []
        num_samples = 0
        for run_index, (run, root) in enumerate(zip(manifests, roots, strict=True)):
            found, n = _index_run(run_index, Path(run), _video_root(Path(run), root), config, left_out, problems)
            entries += found
            num_samples += n
        where = ", ".join(str(m) for m in manifests)
        if num_samples == 0:
            raise ValueError(f"no samples in {where}: the samples tables are empty (did datakit find faces?)")
        if not entries:
            raise ValueError(
                f"none of the {num_samples} samples in {where} is usable with this data config "
                f"(views={config.views}, require_views={config.require_views}, frame_counts={config.frame_counts}, "
                f"fps={config.fps}); left out: {dict(left_out)}" + "".join(f"\n  {p}" for p in problems)
            )
        return cls(config, [Path(m) for m in manifests], entries, left_out, problems)


def _video_root(run: Path, explicit: Path | None) -> Path:
    if explicit is not None:
        return Path(explicit).absolute()
    try:
        src = RunDir.open(run).record()["config"]["src"]
    except IncompleteRunError:
        raise  # names the missing or torn file; a video root would not help
    except NotARunError as err:
        raise NotARunError(f"{err} (or pass --video-root for its videos)") from err
    return Path(src).absolute()  # Path.absolute keeps an absolute src; a relative one joins the current directory


def _read_small(folder: Path, columns: list[str]) -> pa.Table:
    if not folder.is_dir():
        raise ValueError(f"{folder} is missing: not a complete datakit run directory")
    return ds.dataset(folder, format="parquet").to_table(columns=columns)


def _index_run(
    run_index: int, run: Path, root: Path, config: DataConfig, left_out: Counter, problems: list[str]
) -> tuple[list[SampleEntry], int]:
    """(usable entries, number of samples) of one run; reasons of the others go into ``left_out``, and a
    line naming the sample for a problem with the run's content into ``problems`` (the first few)."""
    if not (run / "samples").is_dir():
        raise ValueError(f"{run} has no samples table ({run}/samples/*.parquet): is it a `datakit build` run?")
    RunDir.open(run)  # a whole run: every recorded file in place (else IncompleteRunError names the file)
    clips = _read_small(run / "clips", ["clip_id", "start_frame", "end_frame"])
    videos = _read_small(run / "videos", ["video_id", "fps", "width", "height"])
    tracks = _read_small(run / "tracks", ["track_id", "start_s", "end_s"]).to_pydict()
    spans = dict(zip(tracks["track_id"], zip(tracks["start_s"], tracks["end_s"], strict=True), strict=True))
    entries: list[SampleEntry] = []
    num_samples = 0
    # pyarrow.dataset finds the files (skipping hidden temporaries); ParquetFile reads them one row group
    # at a time because only it can project nested leaves (a reference's view without its crop).
    for file in sorted(ds.dataset(run / "samples", format="parquet").files):
        parquet = pq.ParquetFile(file)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=_INDEX_COLUMNS)
            num_samples += table.num_rows
            meta = _join_metadata(table, clips, videos)
            for row, (sample, clip_video) in enumerate(zip(table.to_pylist(), meta, strict=True)):
                entry = _make_entry(sample, clip_video, config, root, (run_index, file, group, row), spans)
                if isinstance(entry, UnsafePathError):
                    left_out["unsafe_video_path"] += 1
                    if len(problems) < MAX_PROBLEMS:
                        problems.append(f"sample {sample['sample_id']} of {run} left out: unsafe video_path: {entry}")
                elif isinstance(entry, str):
                    left_out[entry] += 1
                else:
                    entries.append(entry)
    paths = {e.video_path for e in entries}
    if paths and not any(p.is_file() for p in paths):
        raise ValueError(
            f"none of the {len(paths)} videos of {run} is under {root}: pass --video-root DIR "
            "(the folder `datakit build --src` read) for this run"
        )
    return entries, num_samples


def _join_metadata(samples: pa.Table, clips: pa.Table, videos: pa.Table) -> list[dict]:
    """Per sample row, in order: its clip's frame range and its video's fps and size (None when unknown)."""
    keys = samples.select(["clip_id", "video_id"]).append_column("_row", pa.array(range(samples.num_rows), pa.int64()))
    joined = keys.join(clips, "clip_id", join_type="left outer").join(videos, "video_id", join_type="left outer")
    return joined.sort_by("_row").select(["start_frame", "end_frame", "fps", "width", "height"]).to_pylist()


def _make_entry(
    sample: dict, meta: dict, config: DataConfig, root: Path, where: tuple, spans: dict[str, tuple[float, float]]
) -> SampleEntry | str | UnsafePathError:
    """The entry of one sample row, or the reason it is left out (the error, for a path leaving the root)."""
    try:
        video_path = inside_root(root, sample["video_path"])  # manifest content: checked before any use
    except UnsafePathError as err:
        return err
    if meta["start_frame"] is None:
        return "unknown_clip"
    if not meta["fps"] or not meta["width"] or not meta["height"]:
        return "no_video_metadata"
    identities = sample["identities"] or []
    views = [{ref["view"] for ref in (ident["references"] or [])} for ident in identities]
    if identities and any(v not in views[0] for v in config.require_views):
        return "missing_views"
    # An identity without a reference in the loaded views would be all proxy tokens: not conditioning.
    kept = [i for i, v in enumerate(views) if v.intersection(config.views)][: config.max_identities]
    if not kept:
        return "no_identity_reference"
    clip_frames = meta["end_frame"] - meta["start_frame"]
    bucket = choose_bucket(
        config, clip_frames=clip_frames, video_fps=meta["fps"], width=meta["width"], height=meta["height"]
    )
    if bucket is None:
        return "too_short"
    present = np.array([[s in config.views and s in views[i] for s in VIEW_SLOTS] for i in kept])  # (N, S)
    run_index, file, group, row = where
    return SampleEntry(
        run=run_index,
        sample_id=sample["sample_id"],
        video_path=video_path,
        clip_frames=(meta["start_frame"], meta["end_frame"]),
        stride=frame_stride(meta["fps"], config.fps),
        bucket=bucket,
        caption=sample["caption"],
        identity_ids=tuple(identities[i]["identity_id"] for i in kept),
        identity_rows=tuple(kept),
        present=present,
        file=file,
        row_group=group,
        row=row,
        focus_frame=_focus_frame(identities[kept[0]].get("track_ids") or [], spans, meta["fps"]),
    )


def _focus_frame(track_ids: list[str], spans: dict[str, tuple[float, float]], fps: float) -> int | None:
    """Source frame in the middle of the main subject's tracks (first appearance to last), None without any."""
    known = [spans[t] for t in track_ids if t in spans]
    if not known:
        return None
    middle_s = (min(start for start, _ in known) + max(end for _, end in known)) / 2
    return round(middle_s * fps)


@dataclass(slots=True)
class LoadedSample:
    """The pixels of one sample."""

    video: torch.Tensor  # (3, F, H, W) uint8 (to_unit_range converts on the training device)
    ref_pixels: torch.Tensor  # (N, S, 3, h, w) float32 in [-1, 1], zeros where absent
    ref_present: torch.Tensor  # (N, S) bool
    caption: str  # "" for a null caption


class SampleReader:
    """Loads indexed samples; keeps the ``identities`` column of the last row group it read (its crops)."""

    def __init__(self, config: DataConfig) -> None:
        self.config = config
        self._key: tuple[str, int] | None = None
        self._identities: pa.ChunkedArray | None = None

    def _row_identities(self, entry: SampleEntry) -> list[dict]:
        if self._key != (entry.file, entry.row_group):
            table = pq.ParquetFile(entry.file).read_row_group(entry.row_group, columns=["identities"])
            self._key, self._identities = (entry.file, entry.row_group), table.column("identities")
        return self._identities.slice(entry.row, 1).to_pylist()[0]  # only this row becomes Python objects

    def load(self, entry: SampleEntry) -> LoadedSample:
        """Crops first (cheap, and a bad one spares the video decode), then the frames; SampleError if unusable."""
        ref_pixels, ref_present = self._references(entry)  # (N, S, 3, h, w), (N, S)
        frames = read_frames(entry.video_path, entry.frame_indices)  # (F, H, W, 3) uint8
        video = resize_center_crop(frames, (entry.bucket.height, entry.bucket.width))  # (3, F, H, W)
        return LoadedSample(video, ref_pixels, ref_present, entry.caption or "")

    def _references(self, entry: SampleEntry) -> tuple[torch.Tensor, torch.Tensor]:
        """The best-ranked crop per loaded view slot of each used identity: (N, S, 3, h, w) pixels, (N, S) present."""
        h, w = self.config.ref_size
        identities = self._row_identities(entry)
        ref_pixels = torch.zeros(len(entry.identity_rows), len(VIEW_SLOTS), 3, h, w)  # (N, S, 3, h, w)
        ref_present = torch.zeros(len(entry.identity_rows), len(VIEW_SLOTS), dtype=torch.bool)  # (N, S)
        for n, position in enumerate(entry.identity_rows):
            identity = identities[position] if position < len(identities) else {}
            if identity.get("identity_id") != entry.identity_ids[n]:
                raise SampleError("stale_index", f"{entry.file} changed since the index was built")
            for ref in identity["references"] or []:
                slot = VIEW_SLOTS.index(ref["view"]) if ref["view"] in self.config.views else None
                if slot is None or ref_present[n, slot]:
                    continue  # a view not loaded, or a lower-ranked reference of a filled slot
                ref_pixels[n, slot] = decode_crop(ref["crop"], (h, w), ref.get("face_box"))
                ref_present[n, slot] = True
        return ref_pixels, ref_present


def collate(samples: list[LoadedSample], bucket: Bucket, ref_size: tuple[int, int]) -> dict:
    """Stack samples of one bucket; identities are padded to the batch's largest count (all absent).

    No samples gives tensors with B = 0 of the bucket's shape, so an all-skipped batch keeps the keys.
    """
    num_ids = max((s.ref_present.shape[0] for s in samples), default=0)
    ref_pixels = torch.zeros(len(samples), num_ids, len(VIEW_SLOTS), 3, *ref_size)  # (B, N, S, 3, h, w)
    ref_present = torch.zeros(len(samples), num_ids, len(VIEW_SLOTS), dtype=torch.bool)  # (B, N, S)
    for b, s in enumerate(samples):
        ref_pixels[b, : s.ref_present.shape[0]] = s.ref_pixels
        ref_present[b, : s.ref_present.shape[0]] = s.ref_present
    video_shape = (0, 3, bucket.num_frames, bucket.height, bucket.width)
    return {
        # (B, 3, F, H, W) uint8
        "video": torch.stack([s.video for s in samples]) if samples else torch.zeros(video_shape, dtype=torch.uint8),
        "captions": [s.caption for s in samples],
        "ref_pixels": ref_pixels,
        "ref_present": ref_present,
    }


class TrainDataset(IterableDataset):
    """Endless, resumable stream of whole batches for one rank: ``DataLoader(dataset, batch_size=None, num_workers=W)``.

    The rank's stream is ``plan(0) + plan(1) + ...``, a pure function of (seed, rank, world_size); batch K of
    it goes to data-loader worker ``(K - start) % W``, so the DataLoader's round-robin hands the batches out in stream
    order whatever W is, and a resume only needs the position K of the next batch.
    """

    def __init__(self, index: SampleIndex, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if world_size > len(index):
            raise ValueError(f"{world_size} ranks for {len(index)} usable samples: every rank needs at least one")
        self.index = index
        self.rank = rank
        self.world_size = world_size
        self.start = 0

    def plan(self, epoch: int, rank: int, world_size: int) -> list[list[int]]:
        """Batches (entry indices) of one rank in one epoch; a pure function of its arguments and the index.

        Epoch ``e`` shuffles the usable samples with ``default_rng([seed, e])`` and the rank takes every
        ``world_size``-th, so ranks never share a sample within an epoch. Consecutive samples of one bucket
        form a batch; the partial batches left at the end go out too (first-seen bucket first).
        """
        order = np.random.default_rng([self.index.config.seed, epoch]).permutation(len(self.index))
        pending: dict[Bucket, list[int]] = {}
        batches: list[list[int]] = []
        for i in order[rank::world_size].tolist():
            group = pending.setdefault(self.index.entries[i].bucket, [])
            group.append(i)
            if len(group) == self.index.config.batch_size:
                batches.append(group.copy())
                group.clear()
        return batches + [group for group in pending.values() if group]

    def set_position(self, position: int) -> None:
        """Start the stream at batch ``position`` (the next batch not consumed); call before iterating."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        self.start = position

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = SampleReader(self.index.config)
        for position, epoch, batch in self._stream():
            if (position - self.start) % num_workers == worker:  # the DataLoader asks worker 0 first
                yield self._load(reader, position, epoch, batch)

    def _stream(self) -> Iterator[tuple[int, int, list[int]]]:
        """(position, epoch, batch) from ``self.start`` on; planning is cheap next to decoding."""
        epoch, first = 0, 0  # first = stream position of the epoch's first batch
        while True:
            batches = self.plan(epoch, self.rank, self.world_size)
            for k in range(max(self.start - first, 0), len(batches)):
                yield first + k, epoch, batches[k]
            epoch, first = epoch + 1, first + len(batches)

    def _load(self, reader: SampleReader, position: int, epoch: int, batch: list[int]) -> dict:
        samples, ids, skipped = [], [], []
        for i in batch:
            entry = self.index.entries[i]
            try:
                samples.append(reader.load(entry))
                ids.append(entry.sample_id)
            except Exception as exc:  # any unreadable sample is skipped and reported, never fatal
                reason, message = (
                    (exc.reason, exc.message) if isinstance(exc, SampleError) else ("read_error", repr(exc))
                )
                skipped.append((entry.sample_id, reason, message))
        bucket = self.index.entries[batch[0]].bucket
        # A batch whose samples all failed still goes out (empty) so that positions stay in stream order.
        meta = {"position": position, "epoch": epoch, "sample_ids": ids, "skipped": skipped}
        return {**meta, **collate(samples, bucket, self.index.config.ref_size)}
