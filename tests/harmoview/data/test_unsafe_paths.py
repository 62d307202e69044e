"""A crafted ``video_path`` in a run's samples never leads the data reader outside the video root: the sample
is left out, counted and named with its path, and every other sample still trains."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from datakit.store import RunDir
from harmoview.data.dataset import DataConfig, SampleIndex, TrainDataset
from tests.conftest import SHIPPED_SAMPLES, VIDEOS

TINY = {"frame_counts": (5,), "resolutions": ((32, 32), (32, 48)), "fps": 8.0, "ref_size": (32, 32)}


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, Path]:
    """(video root, a real video outside it): the root is a symbolic link to a copy of the shipped footage
    (a mounted source folder is fine), and holds a link to a folder outside it."""
    real = tmp_path / "media" / "videos"
    shutil.copytree(VIDEOS, real)
    outside = tmp_path / "media" / "outside.mp4"
    shutil.copy(VIDEOS / "foreman_cif.mp4", outside)  # readable: reading it would succeed without the check
    (real / "escape").symlink_to(outside.parent)
    root = tmp_path / "root"
    root.symlink_to(real)
    return root, outside


def test_crafted_video_paths_are_left_out_with_a_message(shipped_run: Path, media, tmp_path: Path) -> None:
    root, outside = media
    run = tmp_path / "run"
    shutil.copytree(shipped_run, run, ignore=shutil.ignore_patterns("_index"))
    rundir = RunDir.open(run)
    table = rundir.read("samples")
    ids, paths = table.column("sample_id").to_pylist(), table.column("video_path").to_pylist()
    crafted = {
        ids[0]: "../outside.mp4",
        ids[1]: "/etc/passwd",
        ids[2]: str(outside),  # absolute, to a real video
        ids[3]: str(root.resolve() / paths[3]),  # absolute even inside the root: manifests hold relative paths
        ids[4]: "escape/outside.mp4",  # relative, through a folder link that leads out of the root
        ids[5]: "sub/../../outside.mp4",
    }
    paths = [crafted.get(i, p) for i, p in zip(ids, paths, strict=True)]
    i = table.schema.get_field_index("video_path")
    table = table.set_column(i, table.schema.field(i), pa.array(paths, table.schema.field(i).type))
    rundir.replace_table("samples", table)

    index = SampleIndex.open([run], DataConfig(**TINY, batch_size=4), video_roots=[root])

    assert index.left_out.get("unsafe_video_path") == len(crafted)
    assert len(index) == SHIPPED_SAMPLES - len(crafted)
    assert not {e.sample_id for e in index.entries} & set(crafted)
    real_root = root.resolve()
    assert all(e.video_path.resolve().is_relative_to(real_root) for e in index.entries)
    assert len(index.problems) == len(crafted)
    for sample_id, path in crafted.items():  # one line per sample, naming it and its path
        assert any(sample_id in line and repr(path) in line for line in index.problems), (sample_id, index.problems)

    loaded, skipped = [], []
    for batch in TrainDataset(index):
        if batch["epoch"] == 1:
            break
        loaded += batch["sample_ids"]
        skipped += batch["skipped"]
    assert Counter(loaded) == Counter(set(ids) - set(crafted)) and not skipped


def test_a_run_of_only_crafted_paths_is_a_clear_error(shipped_run: Path, media, tmp_path: Path) -> None:
    root, _ = media
    run = tmp_path / "run"
    shutil.copytree(shipped_run, run, ignore=shutil.ignore_patterns("_index"))
    rundir = RunDir.open(run)
    table = rundir.read("samples")
    i = table.schema.get_field_index("video_path")
    bad = pa.array(["../../etc/passwd"] * table.num_rows, table.schema.field(i).type)
    rundir.replace_table("samples", table.set_column(i, table.schema.field(i), bad))
    with pytest.raises(ValueError, match=r"unsafe_video_path.*\n.*'\.\./\.\./etc/passwd'"):
        SampleIndex.open([run], DataConfig(**TINY), video_roots=[root])
