"""`datakit report` on the shipped run: a static page that opens in headless Chromium without network."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from datakit.schema import VIEWS
from datakit.tools.report import build_report
from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
# No name resolves, so any request that tried to leave the machine would fail (and the page would show it).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--window-size=1400,1800",
]


@pytest.fixture(scope="module")
def report(shipped_run: Path, tmp_path_factory: pytest.TempPathFactory):
    return build_report(shipped_run, tmp_path_factory.mktemp("report") / "out")


def _identity_ids(run: Path) -> set[str]:
    return set(pq.read_table(run / "identities", columns=["identity_id"]).column("identity_id").to_pylist())


def _filled_cells(run: Path) -> set[tuple[str, str]]:
    refs = pq.read_table(run / "reference_views", columns=["identity_id", "view", "rank"])
    refs = refs.filter(pc.equal(refs["rank"], 0))
    return set(zip(refs["identity_id"].to_pylist(), refs["view"].to_pylist(), strict=True))


def test_page_has_one_row_per_identity_and_an_image_per_filled_view(report, shipped_run):
    text = report.index.read_text()
    ids = re.findall(r"data-identity-id='([^']+)'", text)
    assert sorted(ids) == sorted(_identity_ids(shipped_run))
    imgs = re.findall(r"<img src='(crops/[^']+)'[^>]*loading='lazy'", text)
    assert len(imgs) == len(_filled_cells(shipped_run)) == report.num_crops
    assert all((report.index.parent / src).is_file() for src in imgs)
    # Every row has one cell per view bin; empty ones are marked.
    assert text.count("class='view empty'") == len(ids) * len(VIEWS) - len(imgs)
    for part in ("Summary", "Face yaw", "<svg", "Track drop reasons", "Clip drop reasons", "Errors"):
        assert part in text
    assert "obama_weekly_address_1.mp4" in text  # clips with their videos and time ranges


def test_page_is_self_contained(report):
    for page in report.pages:
        text = page.read_text()
        assert "http://" not in text and "https://" not in text and "//" not in text
        assert "<script" not in text and "@import" not in text and "url(" not in text and "<link" not in text


def test_pages_split_many_identities(shipped_run, tmp_path):
    result = build_report(shipped_run, tmp_path / "paged", page_size=5)
    n = len(_identity_ids(shipped_run))
    assert len(result.pages) == (n + 4) // 5
    seen = [i for p in result.pages for i in re.findall(r"data-identity-id='([^']+)'", p.read_text())]
    assert sorted(seen) == sorted(_identity_ids(shipped_run))
    assert "identities-0002.html" in result.index.read_text()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium, Debian's chromium) is absent")
def test_report_opens_in_headless_chromium(report, shipped_run, tmp_path):
    url = report.index.resolve().as_uri()
    png = tmp_path / "report.png"
    shot = subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--screenshot={png}", url], capture_output=True, text=True, timeout=120
    )
    assert png.is_file() and png.stat().st_size > 10_000, shot.stderr[-2000:]
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (1400, 1800)
        assert len(set(img.convert("L").resize((64, 64)).getdata())) > 20  # a rendered page, not a blank one
    dom = subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    rows = re.findall(r'<tr data-identity-id="([^"]+)"', dom)
    assert sorted(rows) == sorted(_identity_ids(shipped_run))
    view_imgs = re.findall(r'<td class="view" data-view="([a-z_]+)"><img src="crops/', dom)
    assert len(view_imgs) == len(_filled_cells(shipped_run))


def test_report_command(shipped_run, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "datakit.cli", "report", "-m", str(shipped_run), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "index.html").is_file() and "report of" in result.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "datakit.cli", "report", "-m", str(tmp_path / "nope"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert missing.returncode == 1 and "not a datakit run" in missing.stderr
