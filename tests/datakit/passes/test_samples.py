"""Sample building: other-context, then other-clip references preferred, same-clip fallback, ordering, ids, schema."""

from __future__ import annotations

import pyarrow as pa
import pytest

from datakit.passes.samples import build_samples, num_other_context, sample_id_for
from datakit.schema import CLIPS, PIPELINE_VERSION, REFERENCE_VIEWS, SAMPLES, VIDEOS, tracks_schema

DIM = 4
#: the recording of each test clip: a1..a3 are one shot of video va, b1 another video; c1 (video vc) is a copy
#: of a1's footage in another file
CONTEXTS = {"a1": "ctx_a", "a2": "ctx_a", "a3": "ctx_a", "b1": "ctx_b", "c1": "ctx_a"}


def make_clips(rows: list[tuple[str, str, float, float]]) -> pa.Table:
    """Clips from (clip_id, video_id, start_s, end_s)."""
    n = len(rows)
    table = pa.table(
        {
            "clip_id": [r[0] for r in rows],
            "video_id": [r[1] for r in rows],
            "start_s": [r[2] for r in rows],
            "end_s": [r[3] for r in rows],
            "start_frame": [0] * n,
            "end_frame": [10] * n,
            "num_frames": [10] * n,
            "shot": list(range(n)),
            "num_faces": [1] * n,
            "num_tracks": [1] * n,
            "caption": [f"caption of {r[0]}" for r in rows],
            "context_id": [CONTEXTS.get(r[0]) for r in rows],
            "pipeline_version": [PIPELINE_VERSION] * n,
        }
    )
    # every other column (scores, drop_reason, caption model ...) is null
    missing = [f for f in CLIPS if f.name not in table.column_names]
    for field in missing:
        table = table.append_column(field, pa.nulls(n, field.type))
    return table.select(CLIPS.names).cast(CLIPS)


def make_tracks(rows: list[tuple[str, str, str | None, float, float]]) -> pa.Table:
    """Tracks from (track_id, clip_id, identity_id, start_s, end_s)."""
    n = len(rows)
    return pa.table(
        {
            "track_id": [r[0] for r in rows],
            "clip_id": [r[1] for r in rows],
            "video_id": ["v" + r[1][0] for r in rows],
            "identity_id": [r[2] for r in rows],
            "drop_reason": pa.nulls(n, pa.string()),
            "start_s": [r[3] for r in rows],
            "end_s": [r[4] for r in rows],
            "num_faces": [1] * n,
            "num_embedded": [0] * n,
            "views": [[]] * n,
            "mean_quality": [0.5] * n,
            "embedding": pa.nulls(n, pa.list_(pa.float32(), DIM)),
            "pipeline_version": [PIPELINE_VERSION] * n,
        }
    ).cast(tracks_schema(DIM))


def make_refs(rows: list[tuple[str, str, int, str, str]]) -> pa.Table:
    """Reference views from (identity_id, view, rank, face_id, clip_id)."""
    n = len(rows)
    return pa.table(
        {
            "identity_id": [r[0] for r in rows],
            "view": [r[1] for r in rows],
            "rank": [r[2] for r in rows],
            "face_id": [r[3] for r in rows],
            "track_id": ["t_" + r[3] for r in rows],
            "clip_id": [r[4] for r in rows],
            "video_id": ["v" + r[4][0] for r in rows],
            "context_id": [CONTEXTS.get(r[4]) for r in rows],
            "frame_index": [0] * n,
            "t_s": [0.0] * n,
            "yaw_deg": [0.0] * n,
            "pitch_deg": [0.0] * n,
            "roll_deg": [0.0] * n,
            "quality": [0.5] * n,
            "crop": [r[3].encode() for r in rows],
            "face_box": [[1.0, 2.0, 3.0 + i, 4.0] for i in range(n)],
            "pipeline_version": [PIPELINE_VERSION] * n,
        }
    ).cast(REFERENCE_VIEWS)


VIDEOS_TABLE = pa.table(
    {
        "video_id": ["va", "vb", "vc"],
        "path": ["dir/a.mp4", "b.mov", "copy_of_a.mkv"],
        "status": ["ok", "ok", "ok"],
        "pipeline_version": [PIPELINE_VERSION] * 3,
    }
)
VIDEOS_TABLE = pa.table(
    {
        f.name: VIDEOS_TABLE.column(f.name) if f.name in VIDEOS_TABLE.column_names else pa.nulls(3, f.type)
        for f in VIDEOS
    }
).cast(VIDEOS)

CLIPS_TABLE = make_clips(
    [("b1", "vb", 0.0, 4.0), ("a2", "va", 5.0, 6.0), ("a1", "va", 0.0, 5.0), ("a3", "va", 6.0, 9.0)]
)
TRACKS_TABLE = make_tracks(
    [
        ("p1", "a1", "id_p", 0.0, 1.0),  # p: 1 s in a1
        ("q1", "a1", "id_q", 0.0, 4.0),  # q: 4 s in a1, the main subject
        ("p2", "b1", "id_p", 0.0, 2.0),
        ("p3", "a1", "id_p", 2.0, 3.0),
        ("x1", "a3", None, 6.0, 9.0),  # no identity: a3 gives no sample
    ]
)
REFS_TABLE = make_refs(
    [
        ("id_p", "frontal", 0, "pf_a1", "a1"),  # best frontal of p is in a1 itself
        ("id_p", "frontal", 1, "pf_b1", "b1"),
        ("id_p", "left", 0, "pl_a1", "a1"),  # p's only left view is in a1
        ("id_q", "right", 0, "qr_a1", "a1"),
    ]
)


def by_clip(table: pa.Table) -> dict[str, dict]:
    return {row["clip_id"]: row for row in table.to_pylist()}


def test_prefers_other_clips_and_falls_back_to_the_same_clip():
    out = build_samples(CLIPS_TABLE, TRACKS_TABLE, REFS_TABLE, VIDEOS_TABLE)
    assert out.schema == SAMPLES
    samples = by_clip(out)
    assert set(samples) == {"a1", "b1"}  # a2 has no track, a3 no linked track
    a1 = samples["a1"]
    assert [p["identity_id"] for p in a1["identities"]] == ["id_q", "id_p"]  # by screen time
    p = a1["identities"][1]
    assert p["track_ids"] == ["p1", "p3"]
    got = [(r["view"], r["face_id"], r["same_clip"], r["same_context"]) for r in p["references"]]
    assert got == [("frontal", "pf_b1", False, False), ("left", "pl_a1", True, True)]  # rank 1 from b1 beats 0
    assert p["references"][0]["context_id"] == "ctx_b"
    q = a1["identities"][0]
    assert [(r["face_id"], r["same_clip"], r["crop"]) for r in q["references"]] == [("qr_a1", True, b"qr_a1")]
    assert q["references"][0]["face_box"] == [1.0, 2.0, 6.0, 4.0]  # the crop's face box travels with it
    # In b1, p's best frontal (from a1) is another clip's.
    b1_refs = samples["b1"]["identities"][0]["references"]
    assert [(r["face_id"], r["same_clip"]) for r in b1_refs] == [("pf_a1", False), ("pl_a1", False)]


def test_ids_paths_order_and_options():
    out = build_samples(CLIPS_TABLE, TRACKS_TABLE, REFS_TABLE, VIDEOS_TABLE, refs_per_view=2)
    rows = out.to_pylist()
    assert [r["clip_id"] for r in rows] == ["a1", "b1"]  # by video, then start
    assert [r["sample_id"] for r in rows] == [sample_id_for("a1"), sample_id_for("b1")]
    assert (rows[0]["video_path"], rows[0]["caption"], rows[0]["end_s"]) == (
        "dir/a.mp4",
        "caption of a1",
        5.0,
    )
    b1_frontal = [r["face_id"] for r in rows[1]["identities"][0]["references"] if r["view"] == "frontal"]
    assert b1_frontal == ["pf_a1"]  # refs_per_view=2 takes only other-clip ones, no same-clip padding
    short = build_samples(CLIPS_TABLE, TRACKS_TABLE, REFS_TABLE, VIDEOS_TABLE, min_clip_s=4.5)
    assert short.column("clip_id").to_pylist() == ["a1"]
    assert set(out.column("pipeline_version").to_pylist()) == {PIPELINE_VERSION}


def test_person_without_references_and_missing_video():
    out = build_samples(CLIPS_TABLE, TRACKS_TABLE, REFS_TABLE.slice(0, 0), VIDEOS_TABLE)
    assert [p["references"] for p in by_clip(out)["a1"]["identities"]] == [[], []]
    with pytest.raises(ValueError, match="not in the videos table"):
        build_samples(CLIPS_TABLE, TRACKS_TABLE, REFS_TABLE, VIDEOS_TABLE.slice(0, 1))
    empty = build_samples(CLIPS_TABLE.slice(0, 0), TRACKS_TABLE, REFS_TABLE, VIDEOS_TABLE)
    assert empty.num_rows == 0 and empty.schema == SAMPLES


def test_prefers_another_context_over_a_copy_of_the_target():
    """A reference from a copy of the target's footage (another file, same recording) is taken only when no
    other recording has that view, and then says so (same_context, not same_clip)."""
    clips = make_clips([("a1", "va", 0.0, 5.0), ("b1", "vb", 0.0, 4.0), ("c1", "vc", 0.0, 5.0)])
    tracks = make_tracks(
        [("p1", "a1", "id_p", 0.0, 1.0), ("p2", "b1", "id_p", 0.0, 2.0), ("p3", "c1", "id_p", 0.0, 2.0)]
    )
    refs = make_refs(
        [
            ("id_p", "frontal", 0, "pf_c1", "c1"),  # the best frontal is in the copy of a1
            ("id_p", "frontal", 1, "pf_b1", "b1"),
            ("id_p", "left", 0, "pl_c1", "c1"),  # the only left view is in the copy
        ]
    )
    samples = by_clip(build_samples(clips, tracks, refs, VIDEOS_TABLE))
    a1 = samples["a1"]
    assert a1["context_id"] == "ctx_a"
    got = [(r["face_id"], r["same_clip"], r["same_context"]) for r in a1["identities"][0]["references"]]
    assert got == [("pf_b1", False, False), ("pl_c1", False, True)]
    # Without contexts (null), another video counts as another recording, as before contexts existed.
    unknown = refs.set_column(refs.schema.get_field_index("context_id"), "context_id", pa.nulls(3, pa.string()))
    got = [
        (r["face_id"], r["same_context"])
        for r in by_clip(build_samples(clips, tracks, unknown, VIDEOS_TABLE))["a1"]["identities"][0]["references"]
    ]
    assert got == [("pf_c1", False), ("pl_c1", False)]


def test_num_other_context_counts_samples_with_a_reference_from_another_recording():
    out = build_samples(CLIPS_TABLE, TRACKS_TABLE, REFS_TABLE, VIDEOS_TABLE)
    # a1: p's frontal comes from b1 (another recording); b1: both of p's references come from a1 (another)
    assert num_other_context(out) == 2
    only_a1 = make_refs([("id_p", "frontal", 0, "pf_a1", "a1"), ("id_q", "right", 0, "qr_a1", "a1")])
    assert num_other_context(build_samples(CLIPS_TABLE, TRACKS_TABLE, only_a1, VIDEOS_TABLE)) == 1  # b1 only
    assert num_other_context(out.slice(0, 0)) == 0
