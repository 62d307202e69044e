"""The training data path on the real manifests that datakit builds from ../shared/media/videos."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter
from itertools import islice
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datakit.store import RunDir
from harmoview.data.buckets import Bucket, choose_bucket, span, window
from harmoview.data.dataset import DataConfig, SampleIndex, SampleReader, TrainDataset
from harmoview.data.video_io import SampleError, decode_crop, read_frames, resize_center_crop, to_unit_range
from harmoview.model.config import VIEW_SLOTS
from tests.conftest import ROOT, SHIPPED_SAMPLES, VIDEOS

TINY = {"frame_counts": (5,), "resolutions": ((32, 32), (32, 48)), "fps": 8.0, "ref_size": (32, 32)}
NUM_SAMPLES = SHIPPED_SAMPLES  # samples datakit makes of the shipped footage


def tiny(**overrides) -> DataConfig:
    return DataConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def index(shipped_run: Path) -> SampleIndex:
    return SampleIndex.open([shipped_run], tiny(batch_size=2, max_identities=3))


@pytest.fixture(scope="module")
def table(shipped_run: Path) -> pa.Table:
    """The samples table with its crops (tests only: the index must never do this)."""
    return pq.read_table(shipped_run / "samples")


def rows_by_id(table: pa.Table) -> dict[str, dict]:
    return {row["sample_id"]: row for row in table.to_pylist()}


def main_views(row: dict) -> set[str]:
    return {ref["view"] for ref in row["identities"][0]["references"]}


def pyav_frames(path: Path, indices: list[int]) -> np.ndarray:
    """Independent reference: decode every frame from the start and keep the wanted ones."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in islice(container.decode(video=0), max(indices) + 1)]
    return np.stack([frames[i] for i in indices])


def take(loader, n: int) -> list[dict]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def rewrite_samples(run: Path, table: pa.Table) -> None:
    """Replace a run's samples table through the store, so the run's records match it (readers verify them)."""
    RunDir.open(run).replace_table("samples", table)


# --- buckets -------------------------------------------------------------------------------------------


def test_bucket_choice_and_centred_window() -> None:
    config = DataConfig()
    wide = choose_bucket(config, clip_frames=300, video_fps=32.0, width=1280, height=720)
    assert wide == Bucket(num_frames=81, height=480, width=832)  # 81 frames every 2nd source frame: 161 fit
    cif = choose_bucket(config, clip_frames=100, video_fps=25.0, width=352, height=288)
    assert cif == Bucket(num_frames=49, height=480, width=480)  # 4:3-ish is closest to square
    assert choose_bucket(config, clip_frames=20, video_fps=25.0, width=352, height=288) is None  # 17 needs 26
    frames = window(100, 200, 5, 2.5)
    assert frames == [144, 147, 149, 152, 154] and len(range(frames[0], frames[-1] + 1)) == span(5, 2.5)
    assert window(0, 9, 5, 1.0) == [2, 3, 4, 5, 6]
    assert window(100, 200, 5, 1.0, focus=120) == [118, 119, 120, 121, 122]  # on the subject
    assert window(100, 200, 5, 1.0, focus=101) == [100, 101, 102, 103, 104]  # but inside the clip
    assert window(100, 200, 5, 1.0, focus=500) == [195, 196, 197, 198, 199]
    with pytest.raises(ValueError, match="4k\\+1"):
        DataConfig(frame_counts=(16,))
    with pytest.raises(ValueError, match="require_views"):
        DataConfig(views=("frontal",), require_views=("left",))


# --- index ---------------------------------------------------------------------------------------------


def test_index_maps_every_sample_to_its_clip(shipped_run: Path, index: SampleIndex, table: pa.Table) -> None:
    clips = {r["clip_id"]: r for r in pq.read_table(shipped_run / "clips").to_pylist()}
    rows = rows_by_id(table)
    assert len(index) + sum(index.left_out.values()) == NUM_SAMPLES == table.num_rows
    assert len(index) == NUM_SAMPLES and index.left_out == {}  # 5 frames at 8 fps fit every shipped clip
    for entry in index.entries:
        row = rows[entry.sample_id]
        clip = clips[row["clip_id"]]
        frames = entry.frame_indices
        assert clip["start_frame"] <= frames[0] < frames[-1] < clip["end_frame"]
        assert frames == sorted(set(frames)) and len(frames) == entry.bucket.num_frames == 5
        assert entry.video_path == VIDEOS / row["video_path"] and entry.video_path.is_file()
        assert entry.identity_ids == tuple(i["identity_id"] for i in row["identities"][:3])
    assert index.num_null_captions == NUM_SAMPLES  # no caption stage ran: every caption is null
    assert {e.bucket for e in index.entries} == {Bucket(5, 32, 48), Bucket(5, 32, 32)}  # 16:9 and CIF/QCIF


def test_default_and_stage1_configs_leave_out_with_reasons(shipped_run: Path, table: pa.Table) -> None:
    videos = {r["video_id"]: r for r in pq.read_table(shipped_run / "videos").to_pylist()}
    clips = {r["clip_id"]: r for r in pq.read_table(shipped_run / "clips").to_pylist()}
    rows = table.to_pylist()
    stride = {r["sample_id"]: max(1.0, videos[r["video_id"]]["fps"] / 16) for r in rows}
    short = {
        r["sample_id"]
        for r in rows
        if clips[r["clip_id"]]["num_frames"] < round(16 * stride[r["sample_id"]]) + 1  # 17 frames at 16 fps
    }
    no_frontal = {r["sample_id"] for r in rows if "frontal" not in main_views(r)} - short
    assert short and no_frontal  # the shipped run has both cases (e.g. cisco's 9 frames, a profile-only main face)

    default = SampleIndex.open([shipped_run], DataConfig())
    assert default.left_out == {"too_short": len(short)}
    stage1 = SampleIndex.open([shipped_run], DataConfig(views=("frontal",), require_views=("frontal",)))
    assert stage1.left_out == {"too_short": len(short), "missing_views": len(no_frontal)}
    assert {e.sample_id for e in stage1.entries} == {r["sample_id"] for r in rows} - short - no_frontal
    assert all(e.bucket.num_frames in (17, 49, 81) for e in stage1.entries)


def test_index_never_reads_the_crop_bytes(shipped_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[list[str] | None] = []
    original = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kwargs):
        requested.append(columns)
        return original(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    for name in ("read", "iter_batches"):
        monkeypatch.setattr(pq.ParquetFile, name, lambda *a, **k: pytest.fail("whole-file read"))
    index = SampleIndex.open([shipped_run], tiny(max_identities=8))
    assert requested and all(cols is not None for cols in requested)
    read = [c for cols in requested for c in cols]
    assert not any(c == "identities" or c.endswith("crop") for c in read), read
    for entry in index.entries:
        assert not any(isinstance(getattr(entry, f), bytes | bytearray) for f in entry.__slots__)


def test_window_follows_the_main_subject(index: SampleIndex, shipped_run: Path) -> None:
    """foreman's second shot outlasts him: its window sits on his track, not at the shot's middle."""
    second = [e for e in index.entries if e.video_path.name == "foreman_cif.mp4"][-1]
    tracks = pq.read_table(shipped_run / "tracks", columns=["clip_id", "identity_id", "start_s", "end_s"]).to_pylist()
    videos = pq.read_table(shipped_run / "videos", columns=["path", "fps"]).to_pylist()
    fps = next(v["fps"] for v in videos if v["path"] == "foreman_cif.mp4")
    clip_id = next(  # the clip whose frame range is this entry's
        c["clip_id"]
        for c in pq.read_table(shipped_run / "clips").to_pylist()
        if c["start_frame"] == second.clip_frames[0] and c["end_frame"] == second.clip_frames[1]
    )
    his = [t for t in tracks if t["clip_id"] == clip_id and t["identity_id"] == second.identity_ids[0]]
    first_s, last_s = min(t["start_s"] for t in his), max(t["end_s"] for t in his)
    middle = second.frame_indices[len(second.frame_indices) // 2]
    assert first_s * fps - 1 <= middle <= last_s * fps + 1, "the window misses the subject"
    assert middle < sum(second.clip_frames) // 2 - 20  # well before the shot's middle, where he is gone


# --- reading -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["face_then_noface_hevc.mov", "hamilton_white_house.mp4", "zhling_720p.mp4"])
def test_frames_are_the_clip_source_frames(index: SampleIndex, name: str) -> None:
    entry = next(e for e in index.entries if e.video_path.name == name)
    expected = pyav_frames(entry.video_path, entry.frame_indices)
    frames = read_frames(entry.video_path, entry.frame_indices)
    assert frames.dtype == np.uint8 and frames.shape == expected.shape
    assert np.array_equal(frames, expected)  # frame-accurate: the same source frames, bit for bit
    sample = SampleReader(index.config).load(entry)
    h, w = entry.bucket.height, entry.bucket.width
    assert sample.video.shape == (3, 5, h, w) and sample.video.dtype == torch.uint8
    assert torch.equal(sample.video, resize_center_crop(expected, (h, w)))
    unit = to_unit_range(sample.video)
    assert unit.abs().max() <= 1.0 and unit.std() > 0.05  # in range, and not blank


def test_pyav_fallback_reads_the_same_frames(
    index: SampleIndex, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import decord

    entry = next(e for e in index.entries if e.video_path.name == "face_then_noface_hevc.mov")
    direct = read_frames(entry.video_path, entry.frame_indices)

    def refuse(*args, **kwargs):
        raise decord.DECORDError("refused")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    assert np.array_equal(read_frames(entry.video_path, entry.frame_indices), direct)
    with pytest.raises(SampleError) as short:
        read_frames(entry.video_path, [0, 169])  # the file has 169 frames
    assert short.value.reason == "short_video"
    monkeypatch.undo()
    with pytest.raises(SampleError, match="short_video"):
        read_frames(entry.video_path, [0, 169])
    with pytest.raises(SampleError, match="missing_video"):
        read_frames(entry.video_path.with_name("nope.mp4"), [0])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(SampleError, match="unreadable_video"):
        read_frames(garbage, [0])


def test_resize_center_crop_keeps_the_middle() -> None:
    frames = np.zeros((2, 40, 100, 3), np.uint8)
    frames[:, :, 30:70] = 255  # a white band in the middle 40 columns
    out = resize_center_crop(frames, (20, 20))  # crop the central 40x40, then halve
    assert out.shape == (3, 2, 20, 20) and out.dtype == torch.uint8 and torch.all(out == 255)
    assert torch.all(to_unit_range(out) == 1.0)


# --- references ----------------------------------------------------------------------------------------


def test_reference_presence_follows_the_samples_table(shipped_run: Path, table: pa.Table) -> None:
    rows = rows_by_id(table)
    index = SampleIndex.open([shipped_run], tiny())  # every view, the main identity only
    reader = SampleReader(index.config)
    for entry in index.entries:
        expected = [slot in main_views(rows[entry.sample_id]) for slot in VIEW_SLOTS]
        assert entry.present.tolist() == [expected]
        sample = reader.load(entry)
        assert sample.ref_present.tolist() == [expected]
        assert sample.ref_pixels.shape == (1, len(VIEW_SLOTS), 3, 32, 32)
        absent = ~sample.ref_present[0]
        assert torch.all(sample.ref_pixels[0, absent] == 0)
        assert all(sample.ref_pixels[0, s].std() > 0.05 for s in torch.nonzero(~absent).flatten())
    # the crop of a slot is the best-ranked (first) reference of that view, decoded to ref_size
    entry = index.entries[0]
    first = next(r for r in rows[entry.sample_id]["identities"][0]["references"] if r["view"] == "frontal")
    assert torch.equal(reader.load(entry).ref_pixels[0, 0], decode_crop(first["crop"], (32, 32), first["face_box"]))


def test_views_identities_and_required_views(shipped_run: Path, table: pa.Table) -> None:
    rows = rows_by_id(table)
    frontal = SampleIndex.open([shipped_run], tiny(views=("frontal",), max_identities=2))
    reader = SampleReader(frontal.config)
    for entry in frontal.entries:
        assert not entry.present[:, 1:].any() and entry.present[:, 0].all()
        assert reader.load(entry).ref_present[:, 1:].sum() == 0
    num_ids = {e.sample_id: e.num_identities for e in frontal.entries}
    assert all(e.present.shape == (e.num_identities, len(VIEW_SLOTS)) for e in frontal.entries)
    most = max(len(r["identities"]) for r in rows.values())
    assert most > 2 and max(num_ids.values()) == 2 and min(num_ids.values()) == 1

    need = ("frontal", "left")
    required = SampleIndex.open([shipped_run], tiny(require_views=need))
    expected = {sid for sid, r in rows.items() if set(need) <= main_views(r)}
    assert {e.sample_id for e in required.entries} == expected and 0 < len(expected) < NUM_SAMPLES
    assert required.left_out == {"missing_views": NUM_SAMPLES - len(expected)}


def test_decode_crop_rejects_non_images() -> None:
    with pytest.raises(SampleError) as err:
        decode_crop(b"not a jpeg", (32, 32))
    assert err.value.reason == "bad_crop"


# --- sharding, determinism, resume ---------------------------------------------------------------------


def test_ranks_partition_each_epoch_and_plans_are_pure(index: SampleIndex) -> None:
    world = 2
    ranks = [TrainDataset(index, rank=r, world_size=world) for r in range(world)]
    orders = []
    for epoch in range(2):
        plans = [ranks[r].plan(epoch, r, world) for r in range(world)]
        seen = [i for plan in plans for batch in plan for i in batch]
        assert len(seen) == len(set(seen)) == len(index)  # disjoint, and together every usable sample
        for plan in plans:
            assert all(len({index.entries[i].bucket for i in batch}) == 1 and len(batch) <= 2 for batch in plan)
        orders.append(seen)
    assert orders[0] != orders[1]
    again = TrainDataset(SampleIndex.open(index.runs, tiny(batch_size=2, max_identities=3)))
    assert again.plan(0, 1, world) == ranks[0].plan(0, 1, world)
    other_seed = TrainDataset(SampleIndex.open(index.runs, tiny(batch_size=2, max_identities=3, seed=1)))
    assert other_seed.plan(0, 1, world) != ranks[0].plan(0, 1, world)
    with pytest.raises(ValueError, match="usable samples"):
        TrainDataset(index, rank=0, world_size=len(index) + 1)


def test_two_ranks_of_two_workers_read_each_sample_once(index: SampleIndex) -> None:
    read: list[str] = []
    for rank in range(2):
        dataset = TrainDataset(index, rank=rank, world_size=2)
        plan = dataset.plan(0, rank, 2)
        batches = take(DataLoader(dataset, batch_size=None, num_workers=2), len(plan))
        assert [b["position"] for b in batches] == list(range(len(plan)))  # stream order, workers taking turns
        assert [b["sample_ids"] for b in batches] == [[index.entries[i].sample_id for i in batch] for batch in plan]
        read += [sid for b in batches for sid in b["sample_ids"]]
    assert sorted(read) == sorted(e.sample_id for e in index.entries)


def test_dataloader_is_deterministic_and_resumes_exactly(index: SampleIndex) -> None:
    def loader(dataset: TrainDataset, workers: int = 2) -> DataLoader:
        return DataLoader(dataset, batch_size=None, num_workers=workers)

    full = take(loader(TrainDataset(index)), 12)  # 8 batches an epoch: crosses into epoch 1
    assert_same_batches(full, take(loader(TrainDataset(index)), 12))
    assert [b["position"] for b in full] == list(range(12)) and {b["epoch"] for b in full} == {0, 1}
    batch = full[0]
    b, n = batch["video"].shape[0], batch["ref_pixels"].shape[1]
    assert batch["video"].shape[1:3] == (3, 5) and batch["ref_pixels"].shape == (b, n, 5, 3, 32, 32)
    assert batch["ref_present"].shape == (b, n, 5) and batch["ref_present"].dtype == torch.bool
    assert len(batch["captions"]) == b and all(c == "" for c in batch["captions"]) and batch["skipped"] == []

    for consumed, workers in ((5, 2), (7, 0)):  # odd positions, and a resume with another worker count
        resumed = TrainDataset(index)
        resumed.set_position(consumed)
        assert_same_batches(take(loader(resumed, workers), 12 - consumed), full[consumed:])


# --- bad input -----------------------------------------------------------------------------------------


@pytest.fixture
def run_copy(shipped_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(shipped_run, copy, ignore=shutil.ignore_patterns("_index"))  # whole: readers verify runs
    return copy


def with_column(table: pa.Table, name: str, values: list) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


def spoil_crops(identities: list[dict]) -> list[dict]:
    return [
        {**ident, "references": [{**r, "crop": b"not a jpeg"} for r in ident["references"]]} for ident in identities
    ]


def test_bad_samples_are_skipped_and_reported(run_copy: Path, table: pa.Table) -> None:
    ids = table.column("sample_id").to_pylist()
    gone, spoiled = ids[3], ids[9]
    paths = table.column("video_path").to_pylist()
    paths[ids.index(gone)] = "deleted/clip.mp4"
    idents = table.column("identities").to_pylist()
    idents[ids.index(spoiled)] = spoil_crops(idents[ids.index(spoiled)])
    rewrite_samples(run_copy, with_column(with_column(table, "video_path", paths), "identities", idents))

    index = SampleIndex.open([run_copy], tiny(batch_size=4))
    assert len(index) == NUM_SAMPLES  # a missing file is found when loading, not when indexing
    loaded, skipped = [], []
    for batch in TrainDataset(index):
        if batch["epoch"] == 1:
            break
        loaded += batch["sample_ids"]
        skipped += batch["skipped"]
        assert batch["video"].shape[0] == len(batch["sample_ids"]) == batch["ref_present"].shape[0]
    assert sorted(loaded) == sorted(set(ids) - {gone, spoiled})
    assert {(s[0], s[1]) for s in skipped} == {(gone, "missing_video"), (spoiled, "bad_crop")}
    assert all(s[2] for s in skipped)  # with a message


def test_unusable_manifests_are_clear_errors(run_copy: Path, table: pa.Table) -> None:
    rewrite_samples(run_copy, with_column(table, "video_path", ["deleted.mp4"] * table.num_rows))
    with pytest.raises(ValueError, match="--video-root"):
        SampleIndex.open([run_copy], tiny())

    bad = [spoil_crops(i) for i in table.column("identities").to_pylist()]
    rewrite_samples(run_copy, with_column(table, "identities", bad))
    dataset = TrainDataset(SampleIndex.open([run_copy], tiny(batch_size=4)))
    epoch = take(dataset, len(dataset.plan(0, 0, 1)))
    # every batch goes out empty, in order, saying why: the trainer counts them and stops after an epoch
    assert [b["position"] for b in epoch] == list(range(len(epoch))) and all(b["sample_ids"] == [] for b in epoch)
    assert all(b["video"].shape[0] == 0 and b["ref_pixels"].shape[0] == 0 for b in epoch)
    assert Counter(s[1] for b in epoch for s in b["skipped"]) == {"bad_crop": NUM_SAMPLES}

    with pytest.raises(ValueError, match=rf"none of the {NUM_SAMPLES} samples.*too_short"):
        SampleIndex.open([run_copy], tiny(frame_counts=(801,)))

    rewrite_samples(run_copy, table.schema.empty_table())
    with pytest.raises(ValueError, match="no samples"):
        SampleIndex.open([run_copy], tiny())


def test_video_root_resolution(run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = json.loads((run_copy / "run.json").read_text())
    record["config"]["src"] = os.path.relpath(VIDEOS, ROOT)  # as `datakit build --src ../shared/...` records it
    (run_copy / "run.json").write_text(json.dumps(record))
    monkeypatch.chdir(ROOT)
    assert SampleIndex.open([run_copy], tiny()).entries[0].video_path.is_file()
    monkeypatch.chdir(tmp_path)  # the relative src no longer leads to the videos
    with pytest.raises(ValueError, match="--video-root"):
        SampleIndex.open([run_copy], tiny())
    index = SampleIndex.open([run_copy], tiny(), video_roots=[VIDEOS])
    assert len(index) == NUM_SAMPLES and all(e.video_path.is_file() for e in index.entries)
    assert Counter(e.run for e in SampleIndex.open([run_copy, run_copy], tiny(), [VIDEOS, VIDEOS]).entries) == {
        0: NUM_SAMPLES,
        1: NUM_SAMPLES,
    }


def test_decode_crop_centres_the_cut_on_the_face_box() -> None:
    """A tall crop whose face sits at the top (the frame edge cut the crop below it): a square cut keeps it."""
    image = np.full((200, 100, 3), 0, np.uint8)
    image[10:60, 25:75] = 255  # the "face": a white square near the top
    data = io.BytesIO()
    Image.fromarray(image).save(data, format="PNG")
    plain = decode_crop(data.getvalue(), (32, 32))  # centre cut: rows 50-150, the face mostly gone
    around = decode_crop(data.getvalue(), (32, 32), (25.0, 10.0, 75.0, 60.0))
    assert around.mean() > plain.mean() + 0.2
