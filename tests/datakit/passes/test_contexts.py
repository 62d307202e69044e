"""Contexts: duplicate footage across videos from the per-video fingerprints, on the shipped footage.

Facts (../shared/media/README.md, and checked by eye): single_face.mp4 is the first shot of
face_then_noface_hevc.mov (one recording, two codecs); the no-face tail of face_then_noface_hevc.mov is the
Caminandes footage of no_face.mp4. Every other pair of shipped videos is different footage.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datakit.passes.contexts import MAX_HASH_DISTANCE, assign_contexts, attach_contexts, shares_footage
from datakit.video.fingerprint import hamming

COPIES = {
    frozenset({"single_face.mp4", "face_then_noface_hevc.mov"}),
    frozenset({"face_then_noface_hevc.mov", "no_face.mp4"}),
}
STEP_S = 1 / 3  # the default sample_fps


@pytest.fixture(scope="module")
def shipped_clips(shipped_run: Path) -> pa.Table:
    """The run's clips with the path of their video."""
    clips = pq.read_table(shipped_run / "clips")
    videos = pq.read_table(shipped_run / "videos").to_pydict()
    path = dict(zip(videos["video_id"], videos["path"], strict=True))
    return clips.append_column("path", pa.array([path[v] for v in clips.column("video_id").to_pylist()]))


def _prints(clips: pa.Table) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    out: dict[str, list] = defaultdict(list)
    for row in clips.select(["path", "fingerprint", "fingerprint_t_s"]).to_pylist():
        out[row["path"]].append((np.array(row["fingerprint"], np.int64), np.array(row["fingerprint_t_s"])))
    return out


def test_shipped_copies_are_one_context_and_nothing_else_is(shipped_clips: pa.Table):
    rows = shipped_clips.to_pylist()
    assert all(r["context_id"] for r in rows)
    by_path: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_path[r["path"]].append(r["context_id"])
    assert by_path["single_face.mp4"][0] == by_path["face_then_noface_hevc.mov"][0]
    shared = {
        frozenset({a, b}) for a, b in combinations(by_path, 2) if set(by_path[a]) & set(by_path[b])
    }  # pairs of videos with a context in common
    assert shared == COPIES
    # A shot cut into clips for length is one recording; the four shots of the Hamilton video are four.
    assert len(set(by_path["pexels_woman_expressions.mp4"])) == 1 < len(by_path["pexels_woman_expressions.mp4"])
    assert len(set(by_path["hamilton_white_house.mp4"])) == len(by_path["hamilton_white_house.mp4"]) == 4


def test_the_hash_threshold_separates_copies_from_other_footage(shipped_clips: pa.Table):
    """The evidence behind MAX_HASH_DISTANCE, kept true: a copy's frames are far below it, every frame of
    other footage far above (margins of 4 bits on either side)."""
    prints = _prints(shipped_clips)
    hashes = {path: np.concatenate([h for h, _ in clips]) for path, clips in prints.items()}
    for a, b in combinations(sorted(hashes), 2):
        if frozenset({a, b}) not in COPIES and len(hashes[a]) and len(hashes[b]):
            assert hamming(hashes[a], hashes[b]).min() >= MAX_HASH_DISTANCE + 4, (a, b)
    single, copy = prints["single_face.mp4"][0], prints["face_then_noface_hevc.mov"][0]
    assert hamming(single[0], copy[0]).min(axis=1).max() <= MAX_HASH_DISTANCE - 4


def test_shared_footage_needs_several_frames_at_one_offset(shipped_clips: pa.Table):
    hashes, times = _prints(shipped_clips)["pexels_woman_expressions.mp4"][0]
    three = hashes[:3]
    base = (three, times[:3])
    assert shares_footage(base, (three, times[:3] + 7.0), step_s=STEP_S)  # the same frames later in a file
    assert not shares_footage(base, (three, np.array([0.0, 5.0, 10.0])), step_s=STEP_S)  # no common offset
    assert not shares_footage((hashes[:1], times[:1]), (hashes[:1], times[:1]), step_s=STEP_S)  # one frame: never
    one_bit_off = three ^ np.int64(1)
    assert shares_footage(base, (one_bit_off, times[:3]), step_s=STEP_S)


def test_assign_contexts_ids_are_stable_and_attach_fills_only_known_clips(shipped_clips: pa.Table):
    clips = shipped_clips.drop_columns(["path"])
    again = assign_contexts(clips.take(np.arange(clips.num_rows)[::-1]), sample_fps=3.0)
    mapping = dict(zip(again.column("clip_id").to_pylist(), again.column("context_id").to_pylist(), strict=True))
    assert mapping == dict(
        zip(clips.column("clip_id").to_pylist(), clips.column("context_id").to_pylist(), strict=True)
    )
    members: dict[str, list[str]] = defaultdict(list)
    for clip_id, context_id in mapping.items():
        members[context_id].append(clip_id)
    for context_id, clip_ids in members.items():
        assert context_id == "ctx_" + hashlib.sha1(min(clip_ids).encode()).hexdigest()[:16]
    first = clips.column("clip_id")[0].as_py()
    known = pa.table({"clip_id": [first], "context_id": ["ctx_x"]})
    attached = attach_contexts(clips, known).column("context_id").to_pylist()
    assert attached[0] == "ctx_x" and attached[1:] == [None] * (clips.num_rows - 1)


def _sampled_prints(path: Path, fps: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """The fingerprint of a whole file as the per-video job samples it (``fps``, flat frames skipped)."""
    from datakit.video.decode import DecodeStats, iter_frames, probe
    from datakit.video.fingerprint import frame_hash

    hashes, times, next_t = [], [], 0.0
    for frame in iter_frames(path, probe(path).fps, DecodeStats()):
        if frame.t_s + 1e-6 >= next_t:
            next_t = frame.t_s + 1 / fps
            code = frame_hash(frame.bgr())
            if code is not None:
                hashes.append(code)
                times.append(frame.t_s)
    return np.array(hashes, np.int64), np.array(times)


def test_a_harsh_reencode_of_hand_held_footage_is_still_found(tmp_path: Path, videos_dir: Path):
    """foreman_cif.mp4 (hand-held, the hardest shipped case) trimmed by 2.3 s, at half size in MPEG-4 at
    300 kb/s: its frames are up to ~24 bits from the original's (other sampled moments), yet the run matches;
    carphone_qcif.mp4 (another man, also a small CIF-like picture) does not."""
    import av
    import cv2

    from datakit.video.decode import DecodeStats, iter_frames, probe

    src, dst = videos_dir / "foreman_cif.mp4", tmp_path / "foreman_copy.mp4"
    info = probe(src)
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("mpeg4", rate=round(info.fps))
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 176, 144, "yuv420p", 300_000
        for frame in iter_frames(src, info.fps, DecodeStats()):
            if frame.t_s >= 2.3:
                small = cv2.resize(frame.bgr(), (176, 144), interpolation=cv2.INTER_AREA)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(small, format="bgr24")))
        out.mux(stream.encode())
    original, copy = _sampled_prints(src), _sampled_prints(dst)
    assert shares_footage(original, copy, step_s=STEP_S)
    assert not shares_footage(_sampled_prints(videos_dir / "carphone_qcif.mp4"), copy, step_s=STEP_S)
