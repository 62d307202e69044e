"""Reference selection: quality order, per_view, diversity over tracks and clips, schema."""

from __future__ import annotations

import pyarrow as pa

from datakit.references import select_references
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


def make_crops(face_ids: list[str]) -> pa.Table:
    return pa.table(
        {
            "face_id": face_ids,
            "crop": [f"jpeg:{f}".encode() for f in face_ids],
            "crop_width": [64] * len(face_ids),
            "crop_height": [64] * len(face_ids),
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
