"""End-to-end ``datakit build`` runs on the real footage (ground truth: ../shared/media/README.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datakit.schema import PIPELINE_VERSION
from tests.conftest import MODELS, STILLS, VIDEOS, build_args, build_in_subprocess, run_datakit

pytestmark = pytest.mark.slow

# Who appears where (media README). Hamilton is left out: many people, Obama among them.
PERSON = {
    "obama_weekly_address_1.mp4": "obama",
    "obama_weekly_address_2.mp4": "obama",
    "single_face.mp4": "single_face_man",
    "face_then_noface_hevc.mov": "single_face_man",
    "foreman_cif.mp4": "foreman",
    "carphone_qcif.mp4": "carphone",
    "zhling_720p.mp4": "zhling",
    "pexels_woman_expressions.mp4": "pexels",
}


def read(run, table: str) -> pa.Table:
    return pq.read_table(run / table)


@pytest.fixture(scope="module")
def demo(shipped_build):
    """The session's build of the shipped footage (tests/conftest.py): (run dir, summary)."""
    return shipped_build


def _tracks(run) -> list[dict]:
    videos = {r["video_id"]: r["path"] for r in read(run, "videos").to_pylist()}
    return [{**t, "path": videos[t["video_id"]]} for t in read(run, "tracks").to_pylist()]


def _main_identity(tracks: list[dict], path: str) -> str:
    """The identity with the most faces in one video."""
    counts: dict[str, int] = {}
    for t in tracks:
        if t["path"] == path:
            counts[t["identity_id"]] = counts.get(t["identity_id"], 0) + t["num_faces"]
    return max(counts, key=counts.get)


def test_every_video_gets_a_row_and_no_face_has_no_faces(demo):
    run, summary = demo
    videos = {r["path"]: r for r in read(run, "videos").to_pylist()}
    assert set(videos) == {p.name for p in VIDEOS.iterdir()}
    assert videos["no_face.mp4"]["status"] == "no_faces"
    faces = read(run, "faces")
    no_face_id = videos["no_face.mp4"]["video_id"]
    assert no_face_id not in set(faces["video_id"].to_pylist())
    assert all(v["status"] == "ok" for p, v in videos.items() if p != "no_face.mp4")
    assert summary["num_errors"] == 0 and summary["face_stack"] == "yunet+fsanet+dlib"


def test_identities_link_across_videos(demo):
    tracks = _tracks(demo[0])
    assert _main_identity(tracks, "obama_weekly_address_1.mp4") == _main_identity(tracks, "obama_weekly_address_2.mp4")
    assert _main_identity(tracks, "single_face.mp4") == _main_identity(tracks, "face_then_noface_hevc.mov")


def test_distinct_people_are_distinct_identities(demo):
    tracks = _tracks(demo[0])
    people = [
        "foreman_cif.mp4",
        "carphone_qcif.mp4",
        "zhling_720p.mp4",
        "pexels_woman_expressions.mp4",
        "single_face.mp4",
    ]
    assert len({_main_identity(tracks, p) for p in people}) == 5
    cisco = [t for t in tracks if t["path"] == "cisco_two_people.mp4"]
    two = sorted(cisco, key=lambda t: -t["num_faces"])[:2]
    assert len(two) == 2 and two[0]["identity_id"] != two[1]["identity_id"]


def test_no_identity_mixes_two_people(demo):
    persons: dict[str, set[str]] = {}
    for t in _tracks(demo[0]):
        label = PERSON.get(t["path"]) or ("cisco:" + t["track_id"] if t["path"].startswith("cisco") else None)
        if label:
            persons.setdefault(t["identity_id"], set()).add(label)
        elif t["path"].startswith("hamilton"):
            persons.setdefault(t["identity_id"], set()).add("hamilton")
    for identity, labels in persons.items():
        outside = labels - {"hamilton"}
        assert len(outside) <= 1, f"{identity} mixes {sorted(labels)}"
        if "hamilton" in labels:  # the only person of these videos also in the Hamilton clip is Obama
            assert outside <= {"obama"}, f"{identity} mixes {sorted(labels)}"


def test_profiles_are_found_and_binned_with_the_documented_sign(demo):
    run = demo[0]
    con = duckdb.connect()
    rows = con.execute(
        f"""select f.frame_index, f.yaw_deg, f.view, f.face_px from '{run}/faces/*.parquet' f
            join '{run}/videos/*.parquet' v using (video_id)
            where v.path = 'hamilton_white_house.mp4' and f.frame_index between 20 and 81"""
    ).fetchall()
    assert rows, "no face found in the Alex Lacamoire close-up"
    biggest = max(rows, key=lambda r: r[3])
    # Alex Lacamoire faces frame-left at ~80-90 deg: yaw > 0 is "points to the image left"
    assert biggest[1] > 60 and biggest[2] == "left_profile"


def test_references_cover_several_views_and_prefer_other_clips(demo):
    run = demo[0]
    refs = read(run, "reference_views").to_pylist()
    views_by_identity: dict[str, set[str]] = {}
    for r in refs:
        views_by_identity.setdefault(r["identity_id"], set()).add(r["view"])
        assert r["crop"][:3] == b"\xff\xd8\xff"  # JPEG
    assert max(len(v) for v in views_by_identity.values()) >= 2
    samples = read(run, "samples").to_pylist()
    videos = {r["video_id"]: r["path"] for r in read(run, "videos").to_pylist()}
    obama = [s for s in samples if videos[s["video_id"]].startswith("obama_weekly")]
    assert obama, "no training sample for the Obama addresses"
    for s in obama:
        frontal = [r for i in s["identities"] for r in i["references"] if r["view"] == "frontal"]
        assert frontal and all(not r["same_clip"] and r["clip_id"] != s["clip_id"] for r in frontal)


def test_manifests_follow_the_contract_and_read_everywhere(demo):
    run = demo[0]
    faces = read(run, "faces")
    assert faces.schema.field("embedding").type == pa.list_(pa.float32(), 128)
    assert pq.read_table(run / "identities").schema.field("centroid").type == pa.list_(pa.float32(), 128)
    for table in ("videos", "clips", "faces", "tracks", "identities", "reference_views", "samples", "errors"):
        assert set(read(run, table)["pipeline_version"].to_pylist()) <= {PIPELINE_VERSION}
    assert duckdb.sql(f"select count(*) from '{run}/faces/*.parquet'").fetchall()[0][0] == faces.num_rows
    ray_count = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ray, sys; print(ray.data.read_parquet(sys.argv[1]).count())",
            str(run / "clips"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert int(ray_count.stdout.strip().splitlines()[-1]) == read(run, "clips").num_rows
    record = json.loads((run / "run.json").read_text())
    assert record["state"] == "finished" and record["face_stack"]["name"] == "yunet+fsanet+dlib"
    assert record["summary"]["num_faces"] == faces.num_rows


def test_bad_input_is_recorded_and_the_run_goes_on(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("cisco_two_people.mp4", "zhling_720p.mp4"):
        shutil.copy(VIDEOS / name, src / name)
    (src / "copies").mkdir()
    shutil.copy(VIDEOS / "zhling_720p.mp4", src / "copies" / "zhling_again.mp4")  # same bytes, another name
    data = (VIDEOS / "single_face.mp4").read_bytes()
    (src / "empty.mp4").write_bytes(b"")
    (src / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (src / "notes.mp4").write_text("this is a text file with a video name\n" * 20)
    shutil.copy(STILLS / "obama.jpg", src / "still.mov")
    os.symlink(src / "missing-target.mp4", src / "dead_link.mp4")
    foreman = bytearray((VIDEOS / "foreman_cif.mp4").read_bytes())
    middle = len(foreman) // 2
    foreman[middle : middle + 60_000] = os.urandom(60_000)  # undecodable frames in the middle
    (src / "corrupt_middle.mp4").write_bytes(bytes(foreman))

    summary = build_in_subprocess(src=src, out=tmp_path / "out", models_dir=MODELS, workers=2)
    videos = {r["path"]: r for r in read(tmp_path / "out", "videos").to_pylist()}
    errors = {r["item"]: r for r in read(tmp_path / "out", "errors").to_pylist()}
    assert videos["cisco_two_people.mp4"]["status"] == "ok" and videos["zhling_720p.mp4"]["status"] == "ok"
    for bad in ("empty.mp4", "truncated.mp4", "notes.mp4", "still.mov", "dead_link.mp4"):
        assert videos[bad]["status"] == "failed", bad
        assert errors[bad]["message"] and errors[bad]["stage"] in {"discover", "probe", "decode"}, bad
    assert "broken symbolic link" in errors["dead_link.mp4"]["message"]
    assert errors["still.mov"]["error_type"] == "NotAVideo" and "image" in errors["still.mov"]["message"]
    assert videos["corrupt_middle.mp4"]["status"] in {"partial", "failed"}
    assert "corrupt_middle.mp4" in errors
    assert summary["videos"].get("failed", 0) >= 5
    assert videos["copies/zhling_again.mp4"]["status"] == "duplicate"
    assert videos["zhling_720p.mp4"]["video_id"] in videos["copies/zhling_again.mp4"]["error"]
    ids = [v["video_id"] for v in videos.values()]
    assert len(ids) == len(set(ids))  # joins on video_id never count a file twice


def test_insightface_backend_runs_end_to_end_with_the_detector_only_pack(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("cisco_two_people.mp4", "single_face.mp4"):
        os.symlink(VIDEOS / name, src / name)
    summary = build_in_subprocess(
        src=src,
        out=tmp_path / "out",
        backend="insightface",
        models_dir=MODELS,
        insightface_pack=MODELS / "insightface_det_500m",
        workers=1,
    )
    assert summary["face_stack"].startswith("insightface:")
    assert any("dlib" in note for note in summary["stack_notes"])  # no recognition model: dlib embeds
    faces = read(tmp_path / "out", "faces")
    videos = {r["video_id"]: r["path"] for r in read(tmp_path / "out", "videos").to_pylist()}
    per_video = {}
    for vid in faces["video_id"].to_pylist():
        per_video[videos[vid]] = per_video.get(videos[vid], 0) + 1
    assert per_video.get("single_face.mp4", 0) >= 4 and per_video.get("cisco_two_people.mp4", 0) >= 4
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["face_stack"]["detector"].startswith("insightface")


_CRASHING_DRIVER = """
import json, os, sys
import pipelines.video_pool as pool
from datakit import BuildConfig
from pipelines import build


class Crashing(pool.VideoWorker):  # defined in __main__: Ray ships it to the workers by value
    def process(self, src):
        if src.rel_path == "single_face.mp4":
            os._exit(1)  # what a segfault in a native decoder looks like to Ray
        return super().process(src)


pool.VideoWorker = Crashing  # the class of the per-video stage's actors
summary = build(BuildConfig(**json.loads(sys.argv[1])), progress=False)
print(json.dumps(summary.to_dict()))
"""


def test_a_video_that_crashes_its_worker_is_recorded_and_the_run_finishes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("single_face.mp4", "cisco_two_people.mp4"):
        os.symlink(VIDEOS / name, src / name)
    config = json.dumps({"src": str(src), "out": str(tmp_path / "out"), "models_dir": str(MODELS), "workers": 1})
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_DRIVER, config],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    videos = {r["path"]: r["status"] for r in read(tmp_path / "out", "videos").to_pylist()}
    assert videos == {"single_face.mp4": "failed", "cisco_two_people.mp4": "ok"}
    errors = read(tmp_path / "out", "errors").to_pylist()
    assert [e["error_type"] for e in errors] == ["WorkerCrash"]


def _linked_src(folder: Path, names: tuple[str, ...]) -> Path:
    folder.mkdir()
    for name in names:
        os.symlink(VIDEOS / name, folder / name)
    return folder


#: a user's own entries that look like the temporaries datakit used to clean (and once deleted or renamed)
USER_ENTRIES = (".x.tmp", ".a.old", ".b.new", "._index.abc.tmp")


def _user_entries(root: Path) -> dict[str, str]:
    found = {}
    for name in USER_ENTRIES:
        path = root / name
        found[name] = (path / "keep.txt").read_text() if path.is_dir() else path.read_text()
    return found


def _add_user_entries(root: Path) -> None:
    for name in USER_ENTRIES:
        if name == ".x.tmp":
            (root / name).write_text("mine")
        else:
            (root / name).mkdir()
            (root / name / "keep.txt").write_text("mine")


def test_out_with_user_files_is_refused_and_user_entries_beside_a_run_are_left_alone(tmp_path):
    src = _linked_src(tmp_path / "src", ("single_face.mp4",))
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    _add_user_entries(thesis)
    (thesis / "chapter1.tex").write_text("mine")
    for extra in ((), ("--overwrite",)):
        proc = run_datakit(*build_args(src, thesis, *extra))
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "not a datakit run" in proc.stderr and "'.a.old/'" in proc.stderr and "Traceback" not in proc.stderr
        assert sorted(p.name for p in thesis.iterdir()) == sorted([*USER_ENTRIES, "chapter1.tex"])
        assert set(_user_entries(thesis).values()) == {"mine"}

    out = tmp_path / "run"
    assert run_datakit(*build_args(src, out)).returncode == 0
    _add_user_entries(out)  # the user's entries beside a run, and what killed datakit processes left
    stale = (out / ".datakit-new-_index.0a1b2c3d", out / "faces" / ".datakit-tmp-v_x.parquet.0a1b2c3d")
    for folder in stale:
        folder.mkdir()  # folders under file-like temporary names: what crashed `build` with IsADirectoryError
    samples = pq.read_table(out / "samples").num_rows
    for extra in ((), ("--overwrite",)):
        proc = run_datakit(*build_args(src, out, *extra))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert set(_user_entries(out).values()) == {"mine"}
        assert not any(p.exists() for p in stale)
        assert pq.read_table(out / "samples").num_rows == samples


def test_a_second_writer_on_the_same_out_is_refused_with_the_pid_and_kill_9_leaves_no_lock(tmp_path):
    src = _linked_src(tmp_path / "src", ("single_face.mp4", "cisco_two_people.mp4", "carphone_qcif.mp4"))
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "datakit.cli", *build_args(src, out)],
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (
            (out / ".datakit.lock").is_file() and (out / ".datakit.lock").read_text() and (out / "run.json").exists()
        ):
            assert first.poll() is None and time.time() < deadline, "the first build ended before it held the lock"
            time.sleep(0.1)
        for command in (build_args(src, out), build_args(src, out, "--overwrite"), ["filter", "-m", str(out)]):
            proc = run_datakit(*command)
            assert proc.returncode == 1, proc.stderr[-2000:]
            assert f"is in use by datakit pid {first.pid} (build" in proc.stderr, proc.stderr[-2000:]
            assert len(proc.stderr.strip().splitlines()) == 1 and "wait for it or stop it" in proc.stderr
        assert first.poll() is None, "the first build must still be running (else the refusals prove nothing)"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started
        first.wait()
    proc = run_datakit(*build_args(src, out))  # the lock died with its holder
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pq.read_table(out / "videos").num_rows == 3
