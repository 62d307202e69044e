"""`harmoview cache`: encode samples once (VAE latents, umT5 features, ViT features) and train from that.

The frozen encoders cost more than the DiT at small scale and repeat the same work every epoch, so
the cache stores what they make of each sample, next to nothing else:

    <cache>/<key>/cache.json                      encoder fingerprint, bucket settings, text_len
    <cache>/<key>/<sample_id[4:6]>/<sample_id>.safetensors   (datakit ids: letters, digits, "_" only; any
        other id, which a crafted run could make "../../x", is named by its hash: h_<sha256[:32]>)
        latents (C, f, h, w)  text (L, D) trimmed at the caption's length  ref_latents (N, S, C, h', w')
        ref_present (N, S)    vit (N, T, Dv) frontal features (when a ViT is loaded)
        metadata: identity_ids (JSON list, the order of the rows above)

`<key>` is a fingerprint of the encoders and every data setting that changes an encoding (frame
counts, resolutions, fps, reference size), so a cache made for other encoders or buckets is never read
by mistake; cache.json also records those settings by name (bucket preset, ref_latent_size, text_len, ViT
layers, dtypes, one fingerprint per encoder folder), so that a run whose settings match no cache is told
which setting differs. One cache root holds one `<key>/` per bucket preset (`harmoview cache` fills every
PVC stage's presets by default). A sample missing from the cache (its video was unreadable when the cache
was built) is skipped and counted as `uncached` by the trainer, never encoded on the fly.

Each sample file holds every view of every identity with a reference (up to 16); a
training stage takes the views and identities it wants. Files are written to a temporary name and
renamed, so a killed run leaves no torn file and continues where it stopped; with torchrun each rank
encodes every world_size-th sample.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from harmoview.data.dataset import DataConfig, SampleEntry, SampleIndex, SampleReader, TrainDataset, collate
from harmoview.model.config import VIEW_SLOTS
from harmoview.model.encoders import Encoders
from harmoview.train.inputs import EncodedBatch, encode_batch
from harmoview.train.recipes import BUCKETS

CACHE_VERSION = "harmoview-cache-1"
# Every identity with a reference, not just the 3 a stage-4 sample uses: a stage that loads fewer views
# may pick other identities than "the first 3 with any view", and they must be in the cache too.
CACHE_MAX_IDENTITIES = 16


def _settings(encoders: Encoders, data: DataConfig) -> dict:
    """Everything that changes a sample's encodings: hashed into the cache key, recorded in cache.json."""
    return {
        "version": CACHE_VERSION, "encoders": encoders.fingerprint(), "frame_counts": list(data.frame_counts),
        "resolutions": [list(r) for r in data.resolutions], "fps": data.fps, "ref_size": list(data.ref_size),
    }  # fmt: skip


def cache_key(encoders: Encoders, data: DataConfig) -> str:
    """Fingerprint of everything that changes a sample's encodings."""
    return hashlib.sha256(json.dumps(_settings(encoders, data), sort_keys=True).encode()).hexdigest()[:16]


def cache_data_config(data: DataConfig) -> DataConfig:
    """The data config a cache is built with: the stage's buckets, every view, every identity with a reference."""
    return replace(data, views=VIEW_SLOTS, require_views=(), max_identities=CACHE_MAX_IDENTITIES)


_SAFE_ID = re.compile(r"^[A-Za-z0-9_]{1,128}$")  # what datakit's ids are (smp_<hex>): a name that is no path


def sample_file(folder: Path, sample_id: str) -> Path:
    """Where a sample's encodings are in a cache folder (sharded by two characters of its id). The id is
    manifest content: one that is not a plain datakit id is replaced by its hash, so it never names a path."""
    name = sample_id if _SAFE_ID.match(sample_id) else "h_" + hashlib.sha256(sample_id.encode()).hexdigest()[:32]
    return folder / name[4:6] / f"{name}.safetensors"


@dataclass
class CacheSummary:
    """What `build_cache` did on this rank: samples encoded, already present, skipped by reason."""

    folder: Path
    written: int = 0
    present: int = 0
    skipped: Counter = field(default_factory=Counter)

    def format(self) -> str:
        """One line for the console."""
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"cache {self.folder}: {self.written} samples encoded, {self.present} already there; skipped: {skipped}"


def build_cache(
    manifests: list[Path], out: Path, encoders: Encoders, data: DataConfig, *,
    video_roots: list[Path] | None = None, rank: int = 0, world_size: int = 1, progress: bool = True,
) -> CacheSummary:  # fmt: skip
    """Encode this rank's share of the usable samples into `out/<key>/` (skipping those already there)."""
    data = cache_data_config(data)
    folder = Path(out) / cache_key(encoders, data)
    folder.mkdir(parents=True, exist_ok=True)
    index = SampleIndex.open(manifests, data, video_roots)
    if rank == 0:
        for problem in index.problems:  # e.g. a video_path leaving its root: named, counted, never read
            tqdm.write(problem)
    record = _settings(encoders, data) | {"text_len": encoders.text_len} | _described(encoders, data)
    (folder / "cache.json").write_text(json.dumps(record, indent=2))  # CachedDataset pads text back to text_len
    reader, summary = SampleReader(data), CacheSummary(folder)
    for entry in tqdm(index.entries[rank::world_size], desc="encoding", disable=not progress):
        path = sample_file(folder, entry.sample_id)
        if path.exists():
            summary.present += 1
        elif _encode_sample(entry, path, reader, encoders, data, summary):
            summary.written += 1
    return summary


def _encode_sample(
    entry: SampleEntry, path: Path, reader: SampleReader, encoders: Encoders, data: DataConfig, summary: CacheSummary
) -> bool:
    """Load, encode and write one sample; an unreadable sample is counted in `summary.skipped`, never fatal."""
    try:
        sample = reader.load(entry)
    except Exception as exc:
        summary.skipped[getattr(exc, "reason", "read_error")] += 1
        tqdm.write(f"skipped {entry.sample_id}: {exc}")
        return False
    batch = collate([sample], entry.bucket, data.ref_size) | {"sample_ids": [entry.sample_id]}
    enc = encode_batch(batch, encoders, with_refs=True, with_vit=encoders.vit is not None)
    _write(path, enc, entry.identity_ids)
    return True


def _write(path: Path, enc: EncodedBatch, identity_ids: tuple[str, ...]) -> None:
    """One sample's encodings, atomically (temporary file + rename)."""
    text = enc.text[0]  # (Lt, D): keep rows up to the caption's last non-zero one
    nonzero = text.abs().sum(-1).nonzero()
    length = int(nonzero[-1]) + 1 if len(nonzero) else 0
    tensors = {
        "latents": enc.latents[0], "text": text[:length], "ref_latents": enc.ref_latents[0],
        "ref_present": enc.ref_present[0].to(torch.uint8),
    }  # fmt: skip
    if enc.vit is not None:
        tensors["vit"] = enc.vit[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"identity_ids": json.dumps(list(identity_ids))})  # fmt: skip
    os.replace(tmp, path)


def _described(encoders: Encoders, data: DataConfig) -> dict:
    """What cache.json records besides the hashed settings, so that a key mismatch can name its setting."""
    stride = encoders.spatial_stride
    return {
        "buckets": bucket_preset_name(data), "ref_latent_size": [side // stride for side in data.ref_size],
        "encoder_settings": dict(encoders.settings), "encoder_files": encoders.record()["files"],
    }  # fmt: skip


def bucket_preset_name(data: DataConfig) -> str | None:
    """The BUCKETS preset whose frame counts and resolutions `data` has, or None (custom buckets)."""
    shapes = (tuple(data.frame_counts), tuple(tuple(r) for r in data.resolutions))
    return next((name for name, preset in BUCKETS.items() if preset == shapes), None)


def find_cache(root: Path, encoders: Encoders, data: DataConfig, index: SampleIndex) -> tuple[Path, str]:
    """The cache folder of these encoders and buckets under `root`, and a line saying what it holds.

    A `root` that does not exist is a FileNotFoundError; one without a matching folder a ValueError that
    names the settings the closest cache was built with. Samples missing from the folder are skipped by
    `CachedDataset` (counted as `uncached`), never encoded on the fly.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--cache {root} does not exist: build it with `harmoview cache --out {root}` first")
    data = cache_data_config(data)
    folder = root / cache_key(encoders, data)
    if not folder.is_dir():
        raise ValueError(_mismatch(root, _settings(encoders, data) | _described(encoders, data)))
    missing = sum(not sample_file(folder, e.sample_id).exists() for e in index.entries)
    if missing:
        return folder, (
            f"reading encodings from {folder}; {missing} of {len(index)} usable samples are not in it and are "
            f"skipped (counted as uncached; `harmoview cache` with the same settings adds them)"
        )
    return folder, f"reading encodings from {folder}"


def _mismatch(root: Path, wanted: dict) -> str:
    """One line: no cache under `root` matches; the closest one's differing settings, named."""
    candidates = []
    for record_file in sorted(root.glob("*/cache.json")):
        try:
            record = json.loads(record_file.read_text())
        except (OSError, ValueError):
            continue
        candidates.append((record_file.parent.name, _differences(record, wanted)))
    if not candidates:
        return f"--cache {root} holds no harmoview cache (no <key>/cache.json): build it with `harmoview cache`"
    name, differences = min(candidates, key=lambda c: len(c[1]))
    what = "; ".join(differences) or "other encoder files or settings (an older cache that does not record them)"
    others = f" ({len(candidates)} caches there)" if len(candidates) > 1 else ""
    return (
        f"no cache under {root} matches this run{others}: the closest ({name}) was built with {what}. "
        f"Rebuild it with `harmoview cache` and this run's settings, or change this run's to the cache's"
    )


def _differences(record: dict, wanted: dict) -> list[str]:
    """Each setting that both records have and that differs, as "<setting>=<cache's>, this run uses <run's>"."""
    plain = json.loads(json.dumps(wanted))
    found = []
    if record.get("buckets", plain["buckets"]) != plain["buckets"] or (
        record.get("frame_counts") != plain["frame_counts"] or record.get("resolutions") != plain["resolutions"]
    ):
        cached = record.get("buckets") or f"{record.get('frame_counts')} frames x {record.get('resolutions')}"
        ours = plain["buckets"] or f"{plain['frame_counts']} frames x {plain['resolutions']}"
        found.append(f"buckets={cached}, this run uses {ours} (--buckets / --recipe)")
    for key, flag in (("ref_latent_size", "--ref-latent-size"), ("fps", "data fps"), ("version", "harmoview")):
        if key in record and record[key] != plain[key]:
            found.append(f"{key}={record[key]}, this run uses {plain[key]} ({flag})")
    for key, value in (record.get("encoder_settings") or {}).items():
        if plain["encoder_settings"].get(key) != value:
            found.append(f"{key}={value}, this run uses {plain['encoder_settings'].get(key)}")
    for role, value in (record.get("encoder_files") or {}).items():
        if plain["encoder_files"].get(role) != value:
            found.append(f"{role} files with fingerprint {value}, this run {plain['encoder_files'].get(role)}")
    return found


class CachedDataset(TrainDataset):
    """`TrainDataset` whose batches are read from a cache folder (same stream, positions and sharding)."""

    def __init__(self, index: SampleIndex, folder: Path, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(index, rank, world_size)
        self.folder = folder
        self.text_len = json.loads((folder / "cache.json").read_text())["text_len"]

    def _load(self, reader: SampleReader, position: int, epoch: int, batch: list[int]) -> dict:
        parts, skipped = [], []
        for i in batch:
            entry = self.index.entries[i]
            if not sample_file(self.folder, entry.sample_id).exists():  # e.g. its video was gone at cache time
                skipped.append((entry.sample_id, "uncached", f"not in the cache {self.folder}"))
                continue
            try:
                parts.append(self._read(entry))
            except Exception as exc:  # a damaged cache file is a skipped sample, like an unreadable video
                skipped.append((entry.sample_id, "bad_cache_file", repr(exc)))
        meta = {"position": position, "epoch": epoch, "skipped": skipped, "sample_ids": [p[0] for p in parts]}
        if not parts:
            return meta
        return meta | {"encoded": _stack(parts)}

    def _read(self, entry) -> tuple:
        """(sample_id, latents, text, ref_latents, present, vit) of one sample, in the stage's views/identities."""
        with safe_open(str(sample_file(self.folder, entry.sample_id)), framework="pt") as f:
            cached_ids = json.loads(f.metadata()["identity_ids"])
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        rows = [cached_ids.index(i) for i in entry.identity_ids]  # the stage's identities, its order
        present = t["ref_present"][rows].bool() & torch.from_numpy(entry.present)  # (N, S): the stage's views
        text = torch.zeros(self.text_len, t["text"].shape[-1])  # (Lt, D): zero padding as the encoder gives
        text[: t["text"].shape[0]] = t["text"]
        vit = t["vit"][rows] if "vit" in t else None
        return entry.sample_id, t["latents"], text, t["ref_latents"][rows], present, vit


def _stack(parts: list[tuple]) -> EncodedBatch:
    """Stack cached samples; identities are padded to the batch's largest count (all views absent)."""
    num_ids = max(p[4].shape[0] for p in parts)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros(num_ids - t.shape[0], *t.shape[1:])]) if t.shape[0] < num_ids else t

    vit = torch.stack([pad(p[5]) for p in parts]) if parts[0][5] is not None else None
    return EncodedBatch(
        sample_ids=[p[0] for p in parts], latents=torch.stack([p[1] for p in parts]),
        text=torch.stack([p[2] for p in parts]), ref_latents=torch.stack([pad(p[3]) for p in parts]),
        ref_present=torch.stack([pad(p[4]) for p in parts]), vit=vit,
    )  # fmt: skip
