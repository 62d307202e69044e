"""Reference selection: quality order, per_view, diversity over tracks, clips and videos, no near-duplicates,
schema; the per-track spread of candidate crops; and the same properties on a real run over the shipped footage."""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import combinations, pairwise
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datakit.config import BuildConfig
from datakit.faces.quality import THUMB_SIDE
from datakit.passes.references import (
    NEAR_DUPLICATE_NCC,
    CropCandidate,
    offer_spread,
    select_references,
    thumb_similarity,
)
from datakit.schema import CROPS, PIPELINE_VERSION, REFERENCE_VIEWS, faces_schema, tracks_schema

DIM = 4


def make_faces(rows: list[tuple[str, str, str, str, float]]) -> pa.Table:
    """Faces from (face_id, track_id, clip_id, view, quality); video = clip's first letter + 'v'."""
    n = len(rows)
    return pa.table(
        {
            "face_id": [r[0] for r in rows],
            "clip_id": [r[2] for r in rows],
            "track_id": [r[1] for r in rows],
            "video_id": ["v" + r[2][0] for r in rows],
            "frame_index": list(range(n)),
            "t_s": [i / 10 for i in range(n)],
            "bbox": [[0.0, 0.0, 10.0, 10.0]] * n,
            "landmarks": pa.nulls(n, pa.list_(pa.float32(), 10)),
            "det_score": [0.9] * n,
            "face_px": [10.0] * n,
            "sharpness": [1.0] * n,
            "quality": [r[4] for r in rows],
            "yaw_deg": [{"frontal": 0.0, "left": 40.0}.get(r[3]) for r in rows],
            "pitch_deg": [0.0] * n,
            "roll_deg": [0.0] * n,
            "view": [r[3] for r in rows],
            "embedding": pa.nulls(n, pa.list_(pa.float32(), DIM)),
            "pipeline_version": [PIPELINE_VERSION] * n,
        }
    ).cast(faces_schema(DIM))


def noise_thumb(seed: int) -> bytes:
    """A 32x32 gray thumbnail of noise: unrelated to any other seed's (NCC ~0)."""
    return np.random.default_rng(seed).integers(0, 256, THUMB_SIDE * THUMB_SIDE, dtype=np.uint8).tobytes()


def make_crops(face_ids: list[str], thumbs: dict[str, bytes] | None = None) -> pa.Table:
    """Crops of ``face_ids``; each thumbnail is distinct noise unless given in ``thumbs``."""
    thumbs = thumbs or {}
    return pa.table(
        {
            "face_id": face_ids,
            "crop": [f"jpeg:{f}".encode() for f in face_ids],
            "crop_width": [64] * len(face_ids),
            "crop_height": [64] * len(face_ids),
            "face_box": [[12.0, 10.0, 52.0, 54.0]] * len(face_ids),
            "thumb": [thumbs.get(f, noise_thumb(n)) for n, f in enumerate(face_ids)],
        }
    ).cast(CROPS)


def make_tracks(track_identity: dict[str, tuple[str, str | None]]) -> pa.Table:
    """Tracks from {track_id: (clip_id, identity_id)}."""
    n = len(track_identity)
    return pa.table(
        {
            "track_id": list(track_identity),
            "clip_id": [c for c, _ in track_identity.values()],
            "video_id": ["v" + c[0] for c, _ in track_identity.values()],
            "identity_id": [i for _, i in track_identity.values()],
            "drop_reason": pa.nulls(n, pa.string()),
            "start_s": [0.0] * n,
            "end_s": [1.0] * n,
            "num_faces": [1] * n,
            "num_embedded": [0] * n,
            "views": [[]] * n,
            "mean_quality": [0.5] * n,
            "embedding": pa.nulls(n, pa.list_(pa.float32(), DIM)),
            "pipeline_version": [PIPELINE_VERSION] * n,
        }
    ).cast(tracks_schema(DIM))


def refs(table: pa.Table, identity: str, view: str) -> list[str]:
    rows = [r for r in table.to_pylist() if r["identity_id"] == identity and r["view"] == view]
    assert [r["rank"] for r in rows] == list(range(len(rows)))
    return [r["face_id"] for r in rows]


TRACKS = make_tracks(
    {
        "tA": ("a1", "id_p"),  # person p: two tracks in clip a1, one in clip b1
        "tB": ("a1", "id_p"),
        "tC": ("b1", "id_p"),
        "tD": ("a2", "id_q"),  # person q: one track
        "tE": ("a2", None),  # not linked: never a reference
    }
)


def test_ranks_by_quality_within_one_track():
    faces = make_faces([(f"f{i}", "tD", "a2", "frontal", q) for i, q in enumerate([0.2, 0.9, 0.5, 0.7, 0.1])])
    out = select_references(faces, make_crops([f"f{i}" for i in range(5)]), TRACKS, per_view=3)
    assert refs(out, "id_q", "frontal") == ["f1", "f3", "f2"]  # per_view respected, best first
    assert out.schema == REFERENCE_VIEWS
    assert out.column("crop").to_pylist()[0] == b"jpeg:f1"
    assert out.column("face_box").to_pylist()[0] == [12.0, 10.0, 52.0, 54.0]
    assert set(out.column("pipeline_version").to_pylist()) == {PIPELINE_VERSION}


def test_diversity_over_tracks_then_clips():
    faces = make_faces(
        [
            ("a_best", "tA", "a1", "frontal", 0.99),
            ("a_2nd", "tA", "a1", "frontal", 0.98),
            ("a_3rd", "tA", "a1", "frontal", 0.97),
            ("b_best", "tB", "a1", "frontal", 0.60),  # second track of clip a1
            ("c_best", "tC", "b1", "frontal", 0.30),  # the only track of clip b1, poor quality
            ("c_2nd", "tC", "b1", "frontal", 0.20),
        ]
    )
    crops = make_crops(faces.column("face_id").to_pylist())
    out = select_references(faces, crops, TRACKS, per_view=5)
    # One face per track before any second face; among those, a new clip before a clip's second track.
    assert refs(out, "id_p", "frontal") == ["a_best", "c_best", "b_best", "a_2nd", "c_2nd"]
    top3 = select_references(faces, crops, TRACKS, per_view=3)
    assert {r["track_id"] for r in top3.to_pylist()} == {"tA", "tB", "tC"}


def test_only_faces_with_crop_view_and_identity():
    faces = make_faces(
        [
            ("no_crop", "tD", "a2", "frontal", 0.99),
            ("no_view", "tD", "a2", None, 0.98),
            ("unlinked", "tE", "a2", "frontal", 0.97),
            ("ok_front", "tD", "a2", "frontal", 0.10),
            ("ok_left", "tD", "a2", "left", 0.50),
            ("p_left", "tC", "b1", "left", 0.40),
        ]
    )
    crops = make_crops(["no_view", "unlinked", "ok_front", "ok_left", "p_left"])
    out = select_references(faces, crops, TRACKS)
    assert refs(out, "id_q", "frontal") == ["ok_front"]
    assert refs(out, "id_q", "left") == ["ok_left"]
    keys = [(r["identity_id"], r["view"]) for r in out.to_pylist()]
    assert keys == [("id_p", "left"), ("id_q", "frontal"), ("id_q", "left")]  # sorted; VIEWS order
    row = next(r for r in out.to_pylist() if r["face_id"] == "ok_left")
    assert (row["track_id"], row["clip_id"], row["video_id"], row["yaw_deg"]) == ("tD", "a2", "va", 40.0)


def test_no_candidates_gives_an_empty_table():
    out = select_references(make_faces([("f", "tD", "a2", "frontal", 0.5)]), make_crops([]), TRACKS)
    assert out.num_rows == 0 and out.schema == REFERENCE_VIEWS


def test_near_duplicates_are_skipped_whatever_the_exposure():
    faces = make_faces(
        [
            ("a_best", "tA", "a1", "frontal", 0.99),
            ("a_2nd", "tA", "a1", "frontal", 0.98),
            ("b_best", "tB", "a1", "frontal", 0.60),
            ("c_best", "tC", "b1", "frontal", 0.30),  # the same picture as a_best, darker and flatter
            ("c_2nd", "tC", "b1", "frontal", 0.20),  # a_best's negative: anti-correlated, not a duplicate
        ]
    )
    base = np.frombuffer(noise_thumb(7), np.uint8)
    thumbs = {"a_best": base.tobytes(), "c_best": (base // 2 + 40).astype(np.uint8).tobytes()}
    thumbs["c_2nd"] = (255 - base).astype(np.uint8).tobytes()
    crops = make_crops(faces.column("face_id").to_pylist(), thumbs)
    assert refs(select_references(faces, crops, TRACKS, per_view=5), "id_p", "frontal") == [
        "a_best",
        "b_best",
        "a_2nd",
        "c_2nd",
    ]
    # With the check off (a threshold above any NCC), c_best is back in its diversity place.
    loose = select_references(faces, crops, TRACKS, per_view=5, near_duplicate_ncc=1.5)
    assert refs(loose, "id_p", "frontal") == ["a_best", "c_best", "b_best", "a_2nd", "c_2nd"]
    assert thumb_similarity(thumbs["a_best"], thumbs["c_best"]) > 0.99
    assert thumb_similarity(thumbs["a_best"], thumbs["c_2nd"]) < -0.99
    assert thumb_similarity(b"\x80" * THUMB_SIDE**2, thumbs["a_best"]) == 0.0  # flat: never a duplicate


def test_other_videos_before_a_second_clip_of_one_video():
    tracks = make_tracks({"tA": ("a1", "id_p"), "tF": ("a2", "id_p"), "tC": ("b1", "id_p")})
    faces = make_faces(
        [
            ("a1_best", "tA", "a1", "frontal", 0.9),
            ("a2_best", "tF", "a2", "frontal", 0.8),  # second clip of video va
            ("b1_best", "tC", "b1", "frontal", 0.3),  # the only clip of video vb, poor quality
        ]
    )
    out = select_references(faces, make_crops(faces.column("face_id").to_pylist()), tracks)
    assert refs(out, "id_p", "frontal") == ["a1_best", "b1_best", "a2_best"]


def test_other_contexts_before_a_copy_of_the_footage():
    """Videos va and vc are one recording (a copy): vb's poor face ranks before the copy's good one, and every
    reference carries its context; without contexts every video is its own."""
    tracks = make_tracks({"tA": ("a1", "id_p"), "tF": ("c1", "id_p"), "tC": ("b1", "id_p")})
    faces = make_faces(
        [
            ("a1_best", "tA", "a1", "frontal", 0.9),
            ("c1_best", "tF", "c1", "frontal", 0.8),  # video vc: a copy of va's footage
            ("b1_best", "tC", "b1", "frontal", 0.3),  # video vb: another recording, poor quality
        ]
    )
    contexts = pa.table({"clip_id": ["a1", "b1", "c1"], "context_id": ["ctx_x", "ctx_y", "ctx_x"]})
    crops = make_crops(faces.column("face_id").to_pylist())
    out = select_references(faces, crops, tracks, contexts=contexts)
    assert refs(out, "id_p", "frontal") == ["a1_best", "b1_best", "c1_best"]
    assert out.column("context_id").to_pylist() == ["ctx_x", "ctx_y", "ctx_x"]
    plain = select_references(faces, crops, tracks)
    assert refs(plain, "id_p", "frontal") == ["a1_best", "c1_best", "b1_best"]
    assert plain.column("context_id").null_count == 3


def test_offer_spread_keeps_crops_apart_in_time():
    made: list[int] = []
    pool: list[CropCandidate] = []
    # Sampled at 3 fps: a quality peak at 1.0 s with a close runner-up at 1.33 s, a second peak at 4.0 s.
    times = [n / 3 for n in range(16)]
    quality = {3: 0.9, 4: 0.88, 12: 0.8}
    for no, t in enumerate(times):
        offer_spread(pool, 2, 2.0, quality.get(no, 0.1 + no / 100), t, no, lambda no=no: made.append(no) or no)
    assert [c.no for c in pool] == [3, 12]  # not the neighbours 3 and 4
    assert all(b.t_s - a.t_s >= 2.0 for a, b in pairwise(pool))
    assert 4 not in made and len(made) < len(times)  # a crop is only encoded when it enters the pool
    offer_spread(pool, 2, 2.0, 0.85, 1.2, 99, lambda: 99)  # close to 3 (0.9): dropped
    assert [c.no for c in pool] == [3, 12]
    offer_spread(pool, 2, 2.0, 0.95, 1.2, 100, lambda: 100)  # better than 3: replaces it
    assert [c.no for c in pool] == [100, 12]


# --- on a real run over the shipped footage ------------------------------------------------------------


def _shipped(run: Path) -> tuple[pa.Table, pa.Table, pa.Table, dict]:
    refs_table = pq.read_table(run / "reference_views")
    crops = pq.read_table(run / "_stage" / "crops")
    faces = pq.read_table(run / "faces", columns=["face_id", "video_id", "track_id", "t_s", "bbox", "view"])
    videos = {r["video_id"]: r for r in pq.read_table(run / "videos").to_pylist()}
    return refs_table, crops, faces, videos


def _gray32(jpeg: bytes) -> bytes:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(image, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).tobytes()


def test_shipped_references_are_diverse_and_never_near_duplicates(shipped_run: Path):
    refs_table, crops, faces, _ = _shipped(shipped_run)
    assert refs_table.schema == REFERENCE_VIEWS and refs_table.num_rows > 10
    crop_of = {r["face_id"]: r for r in crops.to_pylist()}
    track_of = dict(zip(faces.column("face_id").to_pylist(), faces.column("track_id").to_pylist(), strict=True))
    view_of = dict(zip(faces.column("face_id").to_pylist(), faces.column("view").to_pylist(), strict=True))
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in refs_table.to_pylist():
        groups[row["identity_id"], row["view"]].append(row)
        # The stored thumbnail describes the stored crop (same picture, before and after JPEG).
        assert thumb_similarity(crop_of[row["face_id"]]["thumb"], _gray32(row["crop"])) > 0.98
    assert any(len(rows) > 1 for rows in groups.values())
    tracks = pq.read_table(shipped_run / "tracks", columns=["track_id", "identity_id"]).to_pydict()
    identity_of_track = dict(zip(tracks["track_id"], tracks["identity_id"], strict=True))
    for (identity, view), rows in groups.items():
        thumbs = [crop_of[r["face_id"]]["thumb"] for r in rows]
        for i, j in combinations(range(len(rows)), 2):
            assert thumb_similarity(thumbs[i], thumbs[j]) < NEAR_DUPLICATE_NCC, (identity, view, rows[i]["face_id"])
        # A track gives a second reference only when every other track's candidates are near-duplicates.
        picked_tracks = [r["track_id"] for r in rows]
        if len(set(picked_tracks)) < len(picked_tracks):
            for face_id, crop in crop_of.items():
                track = track_of[face_id]
                if identity_of_track.get(track) == identity and view_of[face_id] == view and track not in picked_tracks:
                    assert max(thumb_similarity(crop["thumb"], t) for t in thumbs) >= NEAR_DUPLICATE_NCC


def test_shipped_crops_are_large_with_the_face_box_inside(shipped_run: Path):
    _, crops, faces, videos = _shipped(shipped_run)
    face_rows = {r["face_id"]: r for r in faces.to_pylist()}
    cfg_max = BuildConfig(src=".", out=".").crop_max_side
    assert cfg_max == 512
    longest = defaultdict(int)
    for crop in crops.to_pylist():
        face, w, h = face_rows[crop["face_id"]], crop["crop_width"], crop["crop_height"]
        video = videos[face["video_id"]]
        image = cv2.imdecode(np.frombuffer(crop["crop"], np.uint8), cv2.IMREAD_COLOR)
        assert image.shape[:2] == (h, w)
        # Long side: what the source allows (the 1.6x box clipped to the frame), capped at crop_max_side.
        x0, y0, x1, y1 = face["bbox"]
        cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, 0.8 * (x1 - x0), 0.8 * (y1 - y0)
        left, top = max(math.floor(cx - half_w), 0), max(math.floor(cy - half_h), 0)
        right, bottom = min(math.ceil(cx + half_w), video["width"]), min(math.ceil(cy + half_h), video["height"])
        source_long = max(right - left, bottom - top)
        assert max(w, h) == min(source_long, cfg_max)
        longest[video["path"]] = max(longest[video["path"]], max(w, h))
        # The face box lies inside the crop and is the detector box mapped into the crop's pixels.
        bx0, by0, bx1, by1 = crop["face_box"]
        assert 0 <= bx0 < bx1 <= w and 0 <= by0 < by1 <= h
        sx, sy = w / (right - left), h / (bottom - top)
        expected = [max(x0 - left, 0) * sx, max(y0 - top, 0) * sy, min(x1 - left, right - left) * sx]
        expected.append(min(y1 - top, bottom - top) * sy)
        assert np.allclose(crop["face_box"], expected, atol=1.0)
        # Unless the frame edge cut the crop, the face sits in its middle at 1/1.6 of its size.
        if left > 0 and top > 0 and right < video["width"] and bottom < video["height"]:
            assert abs((bx0 + bx1) / 2 - w / 2) <= 1.0 and abs((by0 + by1) / 2 - h / 2) <= 1.0
            assert abs((bx1 - bx0) / w - 1 / 1.6) < 0.02
    # The 720p talking heads give full-size crops (the old cap was 256 px); the 176x144 carphone cannot.
    assert longest["obama_weekly_address_1.mp4"] == longest["obama_weekly_address_2.mp4"] == 512
    assert longest["carphone_qcif.mp4"] < 144


def test_shipped_face_box_is_where_a_detector_finds_the_face(shipped_run: Path, models_dir: Path):
    """YuNet run again on the stored reference crops (not the frames) finds the face at ``face_box``."""
    from datakit.faces.yunet import YuNetDetector

    detector = YuNetDetector(models_dir / "face_detection_yunet_2023mar.onnx", score_threshold=0.5, max_side=0)
    refs_table = pq.read_table(shipped_run / "reference_views", columns=["face_id", "crop", "face_box"])
    checked = 0
    for row in refs_table.to_pylist():
        image = cv2.imdecode(np.frombuffer(row["crop"], np.uint8), cv2.IMREAD_COLOR)
        if max(image.shape[:2]) < 64:
            continue  # too small for YuNet without the frame around it
        found = detector.detect(image, min_score=0.3)
        assert found, row["face_id"]
        assert max(_iou(f.bbox, row["face_box"]) for f in found) > 0.7, row["face_id"]  # measured 0.84-0.99
        checked += 1
    assert checked >= 10


def _iou(a, b) -> float:
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
