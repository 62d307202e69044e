"""Issue 8's identity facts on real footage: stills turned into videos (also 3x, a 4K-size frame) join the
people of the shipped videos, with each face stack's calibrated linking; distinct people stay apart."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import cv2
import pyarrow.dataset as ds
import pytest

from benchmarks.media_truth import still_video
from tests.conftest import MODELS, STILLS, VIDEOS, build_in_subprocess

pytestmark = pytest.mark.slow
SC_PACK = MODELS / "insightface_sc_int8"


def _padded_still(name: str, folder: Path, pad: float = 0.3) -> Path:
    """The still with a grey border (insightface detectors miss faces that fill a tight crop)."""
    image = cv2.imread(str(STILLS / name))
    h, w = image.shape[:2]
    bordered = cv2.copyMakeBorder(
        image, int(h * pad), int(h * pad), int(w * pad), int(w * pad), cv2.BORDER_CONSTANT, value=(127, 127, 127)
    )
    path = folder / f"padded_{Path(name).stem}.png"
    cv2.imwrite(str(path), bordered)
    return path


def _tracks_by_video(run: Path) -> dict[str, list[dict]]:
    videos = {r["video_id"]: r["path"] for r in ds.dataset(run / "videos").to_table().to_pylist()}
    out: dict[str, list[dict]] = defaultdict(list)
    for t in ds.dataset(run / "tracks").to_table().to_pylist():
        out[videos[t["video_id"]]].append(t)
    return out


def _identities(tracks: list[dict]) -> set[str]:
    return {t["identity_id"] for t in tracks if t["identity_id"]}


@pytest.fixture(scope="module")
def stills_run(tmp_path_factory) -> Path:
    """Default stack over both Obama addresses and videos of obama.jpg / biden2.jpg at 1x and 3x."""
    root = tmp_path_factory.mktemp("stills")
    src = root / "src"
    src.mkdir()
    for name in ("obama_weekly_address_1.mp4", "obama_weekly_address_2.mp4"):
        (src / name).symlink_to(VIDEOS / name)
    for still, stem in (("obama.jpg", "obama"), ("biden2.jpg", "biden2")):
        still_video(STILLS / still, src / f"{stem}_1x.mp4", seconds=1.0, fps=6)
        still_video(STILLS / still, src / f"{stem}_3x.mp4", scale=3.0, seconds=1.0, fps=6)
    build_in_subprocess(src=src, out=root / "run", models_dir=MODELS, workers=2)
    return root / "run"


def test_a_3x_still_has_one_face_per_frame_in_the_same_view_and_identity(stills_run):
    faces = ds.dataset(stills_run / "faces").to_table(columns=["video_id", "frame_index", "view"]).to_pylist()
    by_video = _tracks_by_video(stills_run)
    videos = {r["video_id"]: r["path"] for r in ds.dataset(stills_run / "videos").to_table().to_pylist()}
    per_frame: dict[tuple[str, int], int] = defaultdict(int)
    views: dict[str, set] = defaultdict(set)
    for f in faces:
        per_frame[videos[f["video_id"]], f["frame_index"]] += 1
        views[videos[f["video_id"]]].add(f["view"])
    for stem in ("obama", "biden2"):
        big, small = f"{stem}_3x.mp4", f"{stem}_1x.mp4"
        counts = [n for (video, _), n in per_frame.items() if video == big]
        assert counts and set(counts) == {1}, f"{big}: faces per frame {counts}"
        assert views[big] == views[small] and len(views[big]) == 1, (views[big], views[small])
        assert _identities(by_video[big]) == _identities(by_video[small]) and len(_identities(by_video[big])) == 1
    obama = _identities(by_video["obama_3x.mp4"])
    assert (
        obama
        == _identities(by_video["obama_weekly_address_1.mp4"])
        == _identities(by_video["obama_weekly_address_2.mp4"])
    )
    assert not obama & _identities(by_video["biden2_3x.mp4"])


@pytest.fixture(scope="module")
def arcface_run(tmp_path_factory) -> Path:
    """The ArcFace test pack over the shipped footage plus a video of Lin-Manuel Miranda's still."""
    if not SC_PACK.is_dir():
        pytest.skip(f"ArcFace test pack missing: {SC_PACK}")
    root = tmp_path_factory.mktemp("arcface")
    src = root / "src"
    src.mkdir()
    for video in VIDEOS.iterdir():
        (src / video.name).symlink_to(video)
    still_video(_padded_still("lin-manuel-miranda.png", root), src / "miranda_still.mp4", seconds=1.0, fps=6)
    build_in_subprocess(
        src=src, out=root / "run", models_dir=MODELS, backend="insightface", insightface_pack=SC_PACK, workers=2
    )
    return root / "run"


def test_arcface_links_miranda_to_his_still_and_keeps_distinct_people_apart(arcface_run):
    by_video = _tracks_by_video(arcface_run)
    miranda = _identities(by_video["miranda_still.mp4"])
    assert len(miranda) == 1
    # his medium shot (frames 82-210): the kept tracks of that shot
    fps = 30000 / 1001
    medium = [t for t in by_video["hamilton_white_house.mp4"] if 82 / fps <= t["start_s"] and t["end_s"] <= 211 / fps]
    assert miranda & _identities(medium), "Miranda's Hamilton medium shot did not join his still"
    # The six distinct people of the media README: each video's people are found in no other video. One
    # exception is allowed, not tuned away: the men of the two Siemens test sequences (foreman, carphone)
    # score 0.54 with this ArcFace pack (different people here reach at most 0.31, the same person across
    # sources 0.38-0.97) and 0.86-0.96 with dlib; side by side they may well be one actor. Separating them
    # would take a threshold above Obama's own cross-pose pairs. They must still join nobody else.
    siemens = {"foreman_cif.mp4", "carphone_qcif.mp4"}
    for name in (*sorted(siemens), "zhling_720p.mp4", "pexels_woman_expressions.mp4"):
        own = _identities(by_video[name])
        assert own, name
        allowed = siemens if name in siemens else {name}
        others = set().union(*(_identities(ts) for video, ts in by_video.items() if video not in allowed))
        assert not own & others, f"{name} shares an identity with another video"
    cisco = _identities(by_video["cisco_two_people.mp4"])
    assert len(cisco) == 2
    others = set().union(*(_identities(ts) for video, ts in by_video.items() if video != "cisco_two_people.mp4"))
    assert not cisco & others
    # and the earlier facts hold with this stack too; Obama's ~60-70 deg audience face joins his addresses
    obama = _identities(by_video["obama_weekly_address_1.mp4"])
    assert len(obama) == 1 and obama == _identities(by_video["obama_weekly_address_2.mp4"])
    assert obama & _identities(by_video["hamilton_white_house.mp4"])
    assert _identities(by_video["single_face.mp4"]) == _identities(by_video["face_then_noface_hevc.mov"])
