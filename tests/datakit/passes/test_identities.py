"""Identity linking: kNN graph, cannot-link, non-chaining clustering, stable ids; real dlib embeddings."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from datakit.passes.identities import build_identities, identity_id_for, knn_inner_product, link_identities
from datakit.schema import PIPELINE_VERSION, identities_schema, tracks_schema

STILLS = Path(__file__).resolve().parents[4] / "shared" / "media" / "stills"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_tracks(embeddings, *, clips=None, videos=None, times=None, views=None) -> pa.Table:
    """A tracks table: one track per embedding (None for a null one), by default each in its own clip."""
    n = len(embeddings)
    dim = next(len(e) for e in embeddings if e is not None)
    clips = clips or [f"c{i:03d}" for i in range(n)]
    videos = videos or ["v0"] * n
    times = times or [(0.0, 1.0)] * n
    return pa.table(
        {
            "track_id": [f"t{i:03d}" for i in range(n)],
            "clip_id": clips,
            "video_id": videos,
            "identity_id": pa.nulls(n, pa.string()),
            "drop_reason": pa.nulls(n, pa.string()),
            "start_s": [t[0] for t in times],
            "end_s": [t[1] for t in times],
            "num_faces": [3] * n,
            "num_embedded": [0 if e is None else 1 for e in embeddings],
            "views": views or [["frontal"]] * n,
            "mean_quality": [0.5] * n,
            "embedding": [None if e is None else np.asarray(e, np.float32).tolist() for e in embeddings],
            "pipeline_version": [PIPELINE_VERSION] * n,
        }
    ).cast(tracks_schema(dim))


def labels(table: pa.Table) -> dict[str, str]:
    return dict(zip(table.column("track_id").to_pylist(), table.column("identity_id").to_pylist(), strict=True))


def same(lab: dict[str, str], *track_ids: str) -> bool:
    return len({lab[t] for t in track_ids}) == 1


def jitter(rng, centre: np.ndarray, num: int, noise: float) -> np.ndarray:
    """``num`` unit vectors around ``centre``; the noise vector has a norm of about ``noise``."""
    return unit(centre + noise * rng.normal(size=(num, centre.shape[-1])) / np.sqrt(centre.shape[-1]))


def noisy_groups(rng, num_groups: int, per_group: int, dim: int = 32, noise: float = 0.3) -> np.ndarray:
    """Well-separated people (random directions), ``per_group`` tracks each, in group order."""
    centres = unit(rng.normal(size=(num_groups, dim)))
    return np.concatenate([jitter(rng, c, per_group, noise) for c in centres])


# ---------------------------------------------------------------- kNN


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_knn_matches_brute_force(backend):
    if backend == "faiss" and importlib.util.find_spec("faiss") is None:
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(257, 24)))
    sims, idx = knn_inner_product(x, 9, backend=backend, query_block=31, db_block=40)  # many blocks
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    expect = np.argsort(-full, axis=1)[:, :9]
    np.testing.assert_array_equal(idx, expect)
    np.testing.assert_allclose(sims, np.take_along_axis(full, expect, 1), atol=1e-5)


def test_knn_fewer_points_than_k():
    x = unit(np.eye(3, 8) + 0.1)
    sims, idx = knn_inner_product(x, 5, backend="numpy")
    assert idx.shape == (3, 5)
    assert (idx[:, 2:] == -1).all() and np.isneginf(sims[:, 2:]).all()
    assert all(set(idx[i, :2]) == set(range(3)) - {i} for i in range(3))


# ---------------------------------------------------------------- clustering


def test_separated_groups_are_recovered_across_videos():
    rng = np.random.default_rng(1)
    emb = noisy_groups(rng, num_groups=5, per_group=8)
    videos = [f"v{i % 3}" for i in range(len(emb))]  # every person appears in every video
    out = link_identities(make_tracks(list(emb), videos=videos), same_person_cosine=0.8)
    truth = np.repeat(np.arange(5), 8)
    ids = np.array(out.column("identity_id").to_pylist())
    for g in range(5):
        assert len(set(ids[truth == g])) == 1
    assert len(set(ids)) == 5
    assert out.schema == tracks_schema(32)


def test_chain_of_single_tracks_does_not_merge():
    # A~B and B~C above the threshold, A and C far apart (cos 0.44): not one person.
    angle = np.arccos(0.85)
    a, b, c = (np.r_[np.cos(t), np.sin(t), np.zeros(6)] for t in (0.0, angle, 2 * angle))
    lab = labels(link_identities(make_tracks([a, b, c]), same_person_cosine=0.82))
    assert lab["t000"] != lab["t002"]
    assert same(lab, "t000", "t001") or same(lab, "t001", "t002")  # B joins one side


def test_bridge_track_does_not_join_two_people():
    rng = np.random.default_rng(2)
    dim = 32
    p, q = unit(rng.normal(size=(2, dim)))
    q = unit(q - (q @ p) * p)  # two people, orthogonal
    group_p, group_q = jitter(rng, p, 6, 0.2), jitter(rng, q, 6, 0.2)
    bridge = unit(p + q)  # cos ~0.7 to both people, above the threshold
    emb = [*group_p, bridge, *group_q]
    assert (group_p @ bridge > 0.65).all() and (group_q @ bridge > 0.65).all()  # the premise
    lab = labels(link_identities(make_tracks(emb), same_person_cosine=0.65))
    assert len({lab[f"t{i:03d}"] for i in range(6)}) == 1
    assert len({lab[f"t{i:03d}"] for i in range(7, 13)}) == 1
    assert lab["t000"] != lab["t007"]


def test_cannot_link_tracks_on_screen_together():
    rng = np.random.default_rng(3)
    base = unit(rng.normal(size=16))
    emb = list(jitter(rng, base, 5, 0.05))  # five nearly identical tracks
    clips = ["c0", "c0", "c0", "c1", "c0"]
    times = [(0.0, 2.0), (1.5, 3.0), (3.0, 4.0), (0.0, 1.0), (5.0, 6.0)]
    lab = labels(link_identities(make_tracks(emb, clips=clips, times=times), same_person_cosine=0.9))
    assert lab["t000"] != lab["t001"]  # overlap in c0
    assert lab["t001"] != lab["t002"]  # touching at 3.0 s: both have a face in that frame
    # t003 (another clip) is similar to everyone, yet it cannot bring t000 and t001 together.
    assert len(set(lab.values())) >= 2
    assert same(lab, "t000", "t002", "t004") or same(lab, "t001", "t004")


def test_null_embeddings_are_singletons():
    rng = np.random.default_rng(4)
    v = unit(rng.normal(size=8))
    out = link_identities(make_tracks([v, None, v, None]), same_person_cosine=0.8)
    lab = labels(out)
    assert lab["t001"] == identity_id_for("t001") and lab["t003"] == identity_id_for("t003")
    assert same(lab, "t000", "t002") and lab["t000"] == identity_id_for("t000")
    assert len(set(lab.values())) == 3


def test_ids_are_stable_under_row_order():
    rng = np.random.default_rng(5)
    emb = noisy_groups(rng, num_groups=6, per_group=5, noise=0.5)  # noisy: borderline edges exist
    table = make_tracks(list(emb), videos=[f"v{i % 4}" for i in range(len(emb))])
    first = labels(link_identities(table, same_person_cosine=0.75))
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(table.num_rows)
        shuffled = link_identities(table.take(perm), same_person_cosine=0.75)
        assert labels(shuffled) == first
        assert shuffled.column("track_id").to_pylist() == table.take(perm).column("track_id").to_pylist()
    assert all(re.fullmatch(r"id_[0-9a-f]{16}", i) for i in first.values())
    # The id is that of the smallest member track.
    for ident in set(first.values()):
        assert ident == identity_id_for(min(t for t, i in first.items() if i == ident))


def test_person_with_many_tracks_in_two_videos_is_linked():
    # Each video has 20 near-identical tracks of one person, so every track's k=4 nearest neighbours
    # are in its own video: a single global kNN graph would have no edge between the two videos.
    rng = np.random.default_rng(6)
    person = unit(rng.normal(size=32))
    looks = jitter(rng, person, 2, 0.35)  # lighting/camera per video
    emb = np.concatenate([jitter(rng, look, 20, 0.05) for look in looks])
    _, idx = knn_inner_product(emb, 4)
    assert ((idx < 20) == (np.arange(40) < 20)[:, None]).all()  # the premise
    out = link_identities(make_tracks(list(emb), videos=["va"] * 20 + ["vb"] * 20), same_person_cosine=0.85, k=4)
    assert len(set(out.column("identity_id").to_pylist())) == 1


def test_build_identities_summarises_members():
    rng = np.random.default_rng(7)
    emb = noisy_groups(rng, num_groups=2, per_group=3, dim=8, noise=0.05)
    tracks = make_tracks(
        [*emb, None],
        clips=["c0", "c1", "c2", "c0", "c1", "c4", "c3"],
        videos=["v1", "v0", "v1", "v1", "v0", "v1", "v1"],
        views=[["left"], ["frontal"], [], ["right"], [], [], []],
    )
    linked = link_identities(tracks, same_person_cosine=0.9)
    faces = pa.table(
        {
            "track_id": ["t000", "t000", "t002", "t004", "t006", "t_other"],
            "view": ["left_profile", None, "frontal", "right", "left", "frontal"],
        }
    )
    out = build_identities(linked, faces, 8)
    assert out.schema == identities_schema(8)
    assert out.num_rows == 3  # two people and the track without an embedding
    rows = {r["identity_id"]: r for r in out.to_pylist()}
    first = rows[identity_id_for("t000")]
    assert (first["num_tracks"], first["num_clips"], first["num_videos"], first["num_faces"]) == (3, 3, 2, 3)
    assert first["views"] == ["frontal", "left", "left_profile"]  # VIEWS order
    assert first["video_ids"] == ["v0", "v1"]
    np.testing.assert_allclose(first["centroid"], unit(emb[:3].mean(0)), atol=1e-6)
    lone = rows[identity_id_for("t006")]
    assert lone["centroid"] is None and lone["num_faces"] == 1 and lone["views"] == ["left"]
    assert out.column("identity_id").to_pylist() == sorted(rows)
    assert set(out.column("pipeline_version").to_pylist()) == {PIPELINE_VERSION}


# ---------------------------------------------------------------- real embeddings (dlib ResNet)


def _dlib_models():
    dlib = pytest.importorskip("dlib")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        pytest.skip("face_recognition_models not installed")
    # Located without importing the package: its __init__ needs pkg_resources (gone in new setuptools).
    root = Path(spec.submodule_search_locations[0]) / "models"
    return (
        dlib,
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(root / "shape_predictor_5_face_landmarks.dat")),
        dlib.face_recognition_model_v1(str(root / "dlib_face_recognition_resnet_model_v1.dat")),
    )


@pytest.fixture(scope="module")
def still_tracks() -> tuple[list[str], list[np.ndarray]]:
    """One track per face on the stills: (who, unit embedding), who is 'obama', 'biden' or 'other'."""
    cv2 = pytest.importorskip("cv2")
    dlib, detector, predictor, model = _dlib_models()
    # The two largest faces of the group photos, left to right.
    group = {"two_people": ("obama", "biden"), "obama_and_biden": ("biden", "obama")}
    who, raw = [], []
    for name in ["obama", "obama2", "obama3", "biden", "biden2", "two_people", "obama_and_biden"]:
        image = cv2.imread(str(STILLS / f"{name}.jpg"))
        scale = 800 / max(image.shape[:2])
        image = np.ascontiguousarray(cv2.resize(image, None, fx=scale, fy=scale)[:, :, ::-1])  # RGB
        boxes = sorted(detector(image, 1), key=lambda r: -r.area())
        people = group.get(name, (name.rstrip("0123456789"),))
        boxes = sorted(boxes[: len(people)], key=lambda r: r.left()) + boxes[len(people) :]
        for i, box in enumerate(boxes):
            chip = dlib.get_face_chip(image, predictor(image, box), size=150, padding=0.25)
            raw.append(np.array(model.compute_face_descriptor(chip), np.float64))
            who.append(people[i] if i < len(people) else "other")
    assert who.count("obama") == 5 and who.count("biden") == 4
    return who, raw


@pytest.mark.parametrize("threshold", ["brief_0.82", "dlib_0.6_euclidean"])
def test_real_embeddings_obamas_and_bidens(still_tracks, threshold):
    who, raw = still_tracks
    if threshold == "brief_0.82":
        # At 0.82 some Obama-Biden pairs are above the threshold (their cosines are 0.80-0.83):
        # only a clustering that does not chain keeps the two men apart.
        cosine = 0.82
    else:
        # dlib's documented 0.6 is a Euclidean distance between *raw* descriptors (norm ~1.4, not 1),
        # which is a cosine of about 0.9 between the normalised ones.
        norm = float(np.mean([np.linalg.norm(v) for v in raw]))
        cosine = 1.0 - 0.6**2 / (2 * norm**2)
        assert 0.88 < cosine < 0.93
    emb = [unit(v) for v in raw]
    sims = np.array(emb) @ np.array(emb).T
    is_obama, is_biden = (np.array(who) == "obama"), (np.array(who) == "biden")
    if threshold == "brief_0.82":
        assert (sims[np.ix_(is_obama, is_biden)] >= cosine).any()  # the premise: cross edges exist
    lab = list(link_identities(make_tracks(emb), same_person_cosine=cosine).column("identity_id").to_pylist())
    obama = {lab[i] for i in np.flatnonzero(is_obama)}
    biden = {lab[i] for i in np.flatnonzero(is_biden)}
    assert len(obama) == 1 and len(biden) == 1 and obama != biden


def test_consolidated_groups_start_as_one_and_link_across_videos_by_their_pooled_embedding():
    rng = np.random.default_rng(7)
    p, q = unit(rng.normal(size=(2, 32)))
    # Video v0: three pieces of person p, one of them turned away (far from p's direction); video v1: p once.
    turned = unit(p + 1.5 * q)
    emb = [p, turned, jitter(rng, p, 1, 0.1)[0], jitter(rng, p, 1, 0.1)[0], q]
    videos = ["v0", "v0", "v0", "v1", "v1"]
    alone = labels(link_identities(make_tracks(emb, videos=videos), same_person_cosine=0.9))
    assert not same(alone, "t000", "t001")  # the turned piece does not link on its own
    groups = np.array([0, 0, 0, 3, 4])  # the within-video consolidation joined the three v0 pieces
    lab = labels(link_identities(make_tracks(emb, videos=videos), same_person_cosine=0.7, groups=groups))
    assert same(lab, "t000", "t001", "t002")
    assert same(lab, "t000", "t003")  # the group's pooled embedding still links to v1
    assert not same(lab, "t000", "t004")
    # Row order does not change the result.
    order = [4, 2, 0, 3, 1]
    shuffled = make_tracks(emb, videos=videos).take(order)
    again = labels(link_identities(shuffled, same_person_cosine=0.7, groups=groups[order]))
    assert again == lab
