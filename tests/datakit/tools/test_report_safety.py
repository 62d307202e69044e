"""`datakit report` on hostile runs: crafted ids never name files, bidi controls are shown escaped, and the
errors table shows source paths relative to the source root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datakit.store import RunDir
from datakit.tools.report import build_report
from tests.conftest import MODELS, VIDEOS, build_in_subprocess, run_datakit

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "evil<RLO>gpj.mp4" reads as "evilp4m.jpg"


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def test_crafted_identity_and_view_write_only_inside_the_output(shipped_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(shipped_run, run, ignore=shutil.ignore_patterns("_index"))
    rundir = RunDir.open(run)
    table = rundir.read("reference_views")
    ranks = table.column("rank").to_pylist()
    firsts = [i for i, r in enumerate(ranks) if r == 0][:4]
    assert len(firsts) == 4, "the shipped run has rank-0 references"
    crafted = {
        firsts[0]: ("../../x", "frontal"),  # crops/../../x_frontal.jpg = beside the output folder
        firsts[1]: (str(tmp_path / "abs"), "frontal"),  # an absolute path replaces the crops folder
        firsts[2]: ("ok", "../../../y"),
        firsts[3]: ("/", "/"),
    }
    ids, views = table.column("identity_id").to_pylist(), table.column("view").to_pylist()
    for row, (identity_id, view) in crafted.items():
        ids[row], views[row] = identity_id, view
    for name, values in (("identity_id", ids), ("view", views)):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
    rundir.replace_table("reference_views", table)  # as an attacker would: sizes and records match the files

    out = tmp_path / "work" / "out"
    before = _files(tmp_path)
    result = run_datakit("report", "-m", str(run), "--out", str(out))
    assert result.returncode == 0, result.stderr

    new = _files(tmp_path) - before
    assert new and all(out in p.parents for p in new), sorted(str(p) for p in new if out not in p.parents)
    crops = sorted((out / "crops").iterdir())
    assert len(crops) == ranks.count(0)  # every rank-0 crop written, each under a name of its own
    assert all(p.name[:-4].isdigit() for p in crops)


@pytest.fixture(scope="module")
def hostile_source_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A build of real footage whose file name holds U+202E, beside a truncated copy (an errors row whose
    FFmpeg message holds the absolute path): (source folder, run folder)."""
    src = tmp_path_factory.mktemp("hostile") / "source"
    src.mkdir()
    shutil.copy(VIDEOS / "cisco_two_people.mp4", src / f"evil{RLO}gpj.mp4")
    # a real file cut short: its container header passes discovery, then FFmpeg fails naming the absolute path
    (src / "broken.mp4").write_bytes((VIDEOS / "cisco_two_people.mp4").read_bytes()[:3000])
    out = src.parent / "run"
    build_in_subprocess(src=src, out=out, models_dir=MODELS, workers=1)
    return src, out


def test_bidi_controls_in_file_names_are_shown_escaped(hostile_source_run, tmp_path: Path) -> None:
    _, run = hostile_source_run
    assert any(RLO in p for p in pq.read_table(run / "videos", columns=["path"]).column("path").to_pylist())
    result = build_report(run, tmp_path / "out")
    text = "".join(page.read_text(encoding="utf-8") for page in result.pages)
    assert RLO not in text
    assert "evil\\u202egpj.mp4" in text


def test_errors_table_shows_paths_relative_to_the_source(hostile_source_run, tmp_path: Path) -> None:
    src, run = hostile_source_run
    errors = pq.read_table(run / "errors").to_pylist()
    assert any(str(src) in e["message"] for e in errors), "FFmpeg's message names the absolute path"
    text = build_report(run, tmp_path / "out").index.read_text(encoding="utf-8")
    table = text[text.index("<h2>Errors</h2>") :]
    assert "broken.mp4" in table
    assert str(src) not in text and str(src.resolve()) not in text
