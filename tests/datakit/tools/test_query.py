"""`datakit query` and its index on the shipped footage: real photos, real face stack, real FAISS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from datakit.passes.identities import embeddings_to_numpy
from datakit.store import RunDir
from datakit.tools.index import build_vector_index, recall_at_k
from datakit.tools.query import QueryError, open_index, search_photo
from tests.conftest import MODELS, STILLS, VIDEOS, run_datakit

OBAMA_VIDEOS = {"obama_weekly_address_1.mp4", "obama_weekly_address_2.mp4"}


@pytest.fixture(scope="module")
def run(shipped_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped run: the index is written into <run>/_index/, the shared run stays untouched."""
    copy = tmp_path_factory.mktemp("query") / "run"
    shutil.copytree(shipped_run, copy, ignore=shutil.ignore_patterns("_index"))
    return copy


@pytest.fixture(scope="module")
def index(run: Path):
    return open_index(run)


def test_obama_photo_finds_the_identity_of_both_weekly_addresses(index):
    matches = search_photo(index, STILLS / "obama.jpg", models_dir=MODELS)
    assert matches, "obama.jpg matched nothing"
    best = matches[0]
    assert best.identity_id is not None and best.score >= index.same_person_cosine
    assert {c.video_path for c in best.clips} == OBAMA_VIDEOS
    assert best.num_videos == 2 and len(best.clips) == 2
    assert all(c.end_s > c.start_s for c in best.clips)


def test_miranda_photo_finds_the_hamilton_clip(index):
    matches = search_photo(index, STILLS / "lin-manuel-miranda.png", models_dir=MODELS)
    assert matches, "lin-manuel-miranda.png matched nothing at the default threshold"
    clips = matches[0].clips
    assert [c.video_path for c in clips] == ["hamilton_white_house.mp4"]
    # Miranda speaks in the third shot (2.7-7.0 s); the other shots show Lacamoire and the audience.
    assert clips[0].start_s < 4.0 < clips[0].end_s


def test_biden_is_said_plainly_to_match_nothing(run):
    result = run_datakit("query", "-m", str(run), "--image", str(STILLS / "biden.jpg"), "--models-dir", str(MODELS))
    assert result.returncode == 0, result.stderr
    assert "no match above the threshold" in result.stdout
    as_json = run_datakit(
        "query", "-m", str(run), "--image", str(STILLS / "biden.jpg"), "--models-dir", str(MODELS), "--json"
    )
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == []


def test_json_matches_have_the_documented_fields(run):
    result = run_datakit(
        "query", "-m", str(run), "--image", str(STILLS / "obama.jpg"), "--models-dir", str(MODELS), "--json"
    )
    assert result.returncode == 0, result.stderr
    matches = json.loads(result.stdout)
    assert matches and [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)
    first = matches[0]
    assert {"identity_id", "score", "clips"} <= set(first)
    assert {c["video_path"] for c in first["clips"]} == OBAMA_VIDEOS
    for clip in first["clips"]:
        assert {"clip_id", "video_path", "start_s", "end_s"} <= set(clip)
        assert isinstance(clip["start_s"], float) and clip["end_s"] > clip["start_s"]


def test_table_lists_the_clips_with_time_ranges(run):
    result = run_datakit("query", "-m", str(run), "--image", str(STILLS / "obama.jpg"), "--models-dir", str(MODELS))
    assert result.returncode == 0, result.stderr
    assert "obama_weekly_address_1.mp4" in result.stdout and "obama_weekly_address_2.mp4" in result.stdout
    assert " s" in result.stdout and "identity" in result.stdout and "score" in result.stdout


@pytest.fixture(scope="module")
def wall_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photo without a face: a crop of a frame of no_face.mp4, saved as PNG."""
    import av
    from PIL import Image

    with av.open(str(VIDEOS / "no_face.mp4")) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    h, w = frame.shape[:2]
    path = tmp_path_factory.mktemp("noface") / "wall.png"
    Image.fromarray(frame[: h // 2, : w // 2]).save(path)
    return path


def test_photo_without_a_face_is_a_clear_error(run, wall_png):
    result = run_datakit("query", "-m", str(run), "--image", str(wall_png), "--models-dir", str(MODELS))
    assert result.returncode == 1
    assert "no face" in result.stderr and str(wall_png) in result.stderr and "Traceback" not in result.stderr


def test_several_faces_each_queried_or_one_with_face(index):
    every = search_photo(index, STILLS / "obama_and_biden.jpg", models_dir=MODELS, min_score=-1.0, k=1)
    assert sorted(m.query["face"] for m in every) == [0, 1, 2]
    one = search_photo(index, STILLS / "obama_and_biden.jpg", models_dir=MODELS, face=1)
    assert [m.query["face"] for m in one] == [1]
    assert {c.video_path for c in one[0].clips} == OBAMA_VIDEOS  # Obama is the middle face


def test_identity_and_embedding_queries(index, run, tmp_path):
    obama = search_photo(index, STILLS / "obama.jpg", models_dir=MODELS)[0].identity_id
    by_id = index.search(index.identity_embedding(obama), k=3)
    assert by_id[0].identity_id == obama and by_id[0].score == pytest.approx(1.0, abs=1e-4)
    npy = tmp_path / "q.npy"
    np.save(npy, index.identity_embedding(obama))
    result = run_datakit("query", "-m", str(run), "--embedding", str(npy), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["identity_id"] == obama
    missing = run_datakit("query", "-m", str(run), "--identity", "id_nope")
    assert missing.returncode == 1 and "id_nope" in missing.stderr


def test_a_track_outside_every_identity_is_still_found(index, run):
    tracks = pq.read_table(run / "tracks", columns=["track_id", "identity_id", "embedding"])
    orphan = tracks.filter(pc.and_(pc.is_null(tracks["identity_id"]), pc.is_valid(tracks["embedding"])))
    if orphan.num_rows == 0:
        pytest.skip("this run has no embedded track outside an identity")
    emb, _ = embeddings_to_numpy(orphan.column("embedding"), tracks.schema.field("embedding").type.list_size)
    matches = index.search(emb[0], k=3)
    assert matches[0].identity_id is None and matches[0].kind == "track"
    assert matches[0].track_id == orphan["track_id"][0].as_py() and matches[0].clips


def test_runs_with_different_embedders_are_refused(run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("_index"))
    record = json.loads((other / "run.json").read_text())
    record["face_stack"]["embedder"] = "arcface-r50"
    (other / "run.json").write_text(json.dumps(record))
    with pytest.raises(QueryError, match="different embedders"):
        open_index([run, other])
    result = run_datakit("query", "-m", str(run), str(other), "--identity", "x")
    assert result.returncode == 1 and "different embedders" in result.stderr


# -- the index ---------------------------------------------------------------------------------------


def test_small_runs_get_an_exact_index_that_is_reused_until_the_manifests_change(run):
    first = open_index(run)
    info = first.describe()[0]
    assert info["kind"] == "flat" and info["recall_at_10"] == 1.0
    assert (run / "_index" / "meta.json").is_file()
    again = open_index(run)
    assert again.describe()[0]["rebuilt"] is False
    # Rewrite the tracks table without one embedded track: the key changes, the index is rebuilt and smaller.
    files = sorted((run / "tracks").glob("*.parquet"))
    table = pq.read_table(files[0])
    keep = np.ones(table.num_rows, bool)
    keep[np.flatnonzero(table.column("embedding").is_valid().to_numpy(zero_copy_only=False))[0]] = False
    pq.write_table(table.filter(pa.array(keep)), files[0])
    RunDir(run).record_table("tracks")  # a table rewritten by hand: accepted as it is now
    changed = open_index(run)
    assert changed.describe()[0]["rebuilt"] is True
    assert changed.describe()[0]["n"] == info["n"] - 1
    pq.write_table(table, files[0])  # put it back for the other tests
    RunDir(run).record_table("tracks")
    assert open_index(run).describe()[0]["n"] == info["n"]


def _clustered(n: int, n_queries: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors around n/20 random centres, and queries: fresh vectors around the same centres."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n // 20, dim)).astype(np.float32)

    def around(count: int) -> np.ndarray:
        v = centers[rng.integers(0, len(centers), count)] + rng.standard_normal((count, dim)).astype(np.float32) * 0.3
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return around(n), around(n_queries)


def test_large_inputs_get_an_approximate_index_with_measured_recall():
    import faiss

    x, q = _clustered(30_000, 300, 128, seed=1)
    small = build_vector_index(x[:500], exact_max=1_000)
    assert small.kind == "flat" and small.meta["recall_at_10"] == 1.0
    approx = build_vector_index(x, exact_max=1_000)
    assert approx.kind == "hnsw" and approx.ntotal == len(x)
    assert approx.meta["recall_at_10"] >= 0.99 and approx.meta["ef_search"] >= 16
    # Independent check on fresh queries against exact search.
    exact = faiss.IndexFlatIP(128)
    exact.add(x)
    _, truth = exact.search(q, 10)
    _, found = approx.search(q, 10)
    assert recall_at_k(found, truth, 10) >= 0.97
