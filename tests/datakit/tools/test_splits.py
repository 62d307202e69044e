"""`datakit split` and `datakit leakage` on the shipped run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datakit.store import RunDir, RunLockedError
from datakit.tools.splits import assign_splits, split_run
from tests.conftest import MODELS, STILLS, run_datakit


@pytest.fixture(scope="module")
def run(shipped_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped run (split writes RUN/splits/, leakage RUN/_index/)."""
    copy = tmp_path_factory.mktemp("splits") / "run"
    shutil.copytree(shipped_run, copy, ignore=shutil.ignore_patterns("_index", "splits"))
    return copy


def _check_disjoint(table) -> dict[str, str]:
    rows = table.to_pylist()
    ident = {}
    for r in rows:
        if r["kind"] == "identity":
            assert r["item_id"] not in ident, f"{r['item_id']} assigned twice"
            assert r["split"] in ("train", "eval")
            ident[r["item_id"]] = r["split"]
    for r in rows:
        if r["kind"] == "sample":
            sides = {ident[p] for p in r["identity_ids"]}
            if r["split"] == "excluded":
                assert sides == {"train", "eval"}
            else:
                assert sides == {r["split"]}, r
    return ident


def test_split_never_puts_an_identity_in_both_splits(run):
    ids = set(pq.read_table(run / "identities", columns=["identity_id"]).column("identity_id").to_pylist())
    evals = set()
    for seed in range(6):
        result = run_datakit("split", "-m", str(run), "--eval-fraction", "0.3", "--seed", str(seed), "--json")
        assert result.returncode == 0, result.stderr
        counts = json.loads(result.stdout)
        table = pq.read_table(run / "splits")
        ident = _check_disjoint(table)
        assert set(ident) == ids
        assert counts["identities_eval"] == sum(s == "eval" for s in ident.values()) == round(0.3 * len(ids))
        assert counts["samples_excluded"] == 0  # people seen together are assigned together
        assert set(table.column("seed").to_pylist()) == {seed}
        evals.add(frozenset(i for i, s in ident.items() if s == "eval"))
    assert len(evals) > 1  # the seed matters
    again = split_run(run, eval_fraction=0.3, seed=5, write=False)
    assert {i for i, s in again.identity_split.items() if s == "eval"} in evals  # deterministic per seed


def test_eval_identities_are_honoured_and_mixed_samples_excluded(run, tmp_path):
    samples = pq.read_table(run / "samples", columns=["sample_id", "identities"]).to_pylist()
    shared = [s for s in samples if len(s["identities"]) > 1]
    assert shared, "the shipped footage has a sample with two people (cisco_two_people.mp4)"
    forced = shared[0]["identities"][0]["identity_id"]
    listing = tmp_path / "eval.txt"
    listing.write_text(f"# benchmark people\n{forced}\n")
    result = run_datakit("split", "-m", str(run), "--eval-fraction", "0", "--eval-identities", str(listing))
    assert result.returncode == 0, result.stderr
    assert "1 excluded" in result.stdout
    table = pq.read_table(run / "splits")
    ident = _check_disjoint(table)
    assert ident[forced] == "eval" and sum(s == "eval" for s in ident.values()) == 1
    excluded = [r for r in table.to_pylist() if r["split"] == "excluded"]
    assert [r["item_id"] for r in excluded] == [shared[0]["sample_id"]] and "both splits" in excluded[0]["reason"]
    bad = tmp_path / "bad.txt"
    bad.write_text("id_not_there\n")
    wrong = run_datakit("split", "-m", str(run), "--eval-fraction", "0.2", "--eval-identities", str(bad))
    assert wrong.returncode == 1 and "id_not_there" in wrong.stderr


def test_assign_splits_keeps_co_occurring_people_together():
    ids = [f"p{i}" for i in range(10)]
    samples = [("s0", ["p0", "p1"]), ("s1", ["p1", "p2"]), ("s2", ["p3"]), ("s3", ["p4", "p5"])]
    for seed in range(10):
        split, sample_split, _ = assign_splits(ids, samples, eval_fraction=0.4, seed=seed)
        assert split["p0"] == split["p1"] == split["p2"] and split["p4"] == split["p5"]
        assert all(s != "excluded" for s, _ in sample_split.values())
        assert sum(s == "eval" for s in split.values()) <= 4


def test_leakage_flags_obama_and_not_biden(run, tmp_path):
    obama = tmp_path / "bench_obama"
    obama.mkdir()
    shutil.copy(STILLS / "obama.jpg", obama / "obama.jpg")
    flagged = run_datakit("leakage", "-m", str(run), "--images", str(obama), "--models-dir", str(MODELS), "--json")
    assert flagged.returncode == 1, flagged.stderr
    report = json.loads(flagged.stdout)
    assert report["leaked"] and len(report["leaks"]) == 1
    leak = report["leaks"][0]
    assert leak["image"].endswith("obama.jpg") and leak["score"] >= report["threshold"]
    assert {c["video_path"] for c in leak["clips"]} == {"obama_weekly_address_1.mp4", "obama_weekly_address_2.mp4"}

    biden = tmp_path / "bench_biden"
    biden.mkdir()
    shutil.copy(STILLS / "biden.jpg", biden / "biden.jpg")
    clean = run_datakit("leakage", "-m", str(run), "--images", str(biden), "--models-dir", str(MODELS))
    assert clean.returncode == 0, clean.stderr + clean.stdout
    assert "no leakage" in clean.stdout


def test_leakage_reads_a_case_file(run, tmp_path):
    cases = tmp_path / "cases.jsonl"
    lines = [
        {
            "case_id": "c1",
            "prompt": "a man talks",
            "identities": [{"identity_id": "p1", "references": {"frontal": str(STILLS / "biden.jpg")}}],
        },
        {
            "case_id": "c2",
            "prompt": "a man waves",
            "identities": [{"identity_id": "p2", "references": {"frontal": str(STILLS / "obama2.jpg")}}],
        },
    ]
    cases.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_datakit("leakage", "-m", str(run), "--images", str(cases), "--models-dir", str(MODELS), "--json")
    assert result.returncode == 1, result.stderr
    leaks = json.loads(result.stdout)["leaks"]
    assert [leak["used_by"] for leak in leaks] == [[{"case_id": "c2", "identity_id": "p2", "view": "frontal"}]]
    help_text = run_datakit("leakage", "--help").stdout
    assert "exit" in help_text.lower() and "1" in help_text


def test_split_is_refused_while_another_writer_holds_the_run(run):
    """`datakit split` writes RUN/splits/: it takes the run's writer lock, so a running build refuses it."""
    before = sorted(p.name for p in (run / "splits").glob("*")) if (run / "splits").is_dir() else []
    with RunDir(run).lock("build"):
        with pytest.raises(RunLockedError, match="in use by datakit pid"):
            split_run(run, eval_fraction=0.3, seed=1)
        result = run_datakit("split", "-m", str(run), "--eval-fraction", "0.3")
        assert result.returncode == 1 and "in use by datakit pid" in result.stderr, result.stderr
    after = sorted(p.name for p in (run / "splits").glob("*")) if (run / "splits").is_dir() else []
    assert after == before
    assert split_run(run, eval_fraction=0.3, seed=1).path == run / "splits"  # free again
