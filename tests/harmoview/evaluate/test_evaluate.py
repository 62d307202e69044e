"""harmoview.evaluate on real footage: FaceSim, detection rate, motion, text alignment, case files, the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from harmoview.cli import main
from harmoview.evaluate import Case, CaseFileError, CaseIdentity, read_cases, write_cases
from harmoview.evaluate.frames import motion_px, sample_frames
from harmoview.evaluate.metrics import embed_identity, embed_reference, face_metrics, yaw_in_range_rate

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
VIDEOS, STILLS, MODELS = SHARED / "media" / "videos", SHARED / "media" / "stills", SHARED / "models"
OBAMA_1 = VIDEOS / "obama_weekly_address_1.mp4"

if not VIDEOS.is_dir() or not MODELS.is_dir():
    pytest.skip(f"shared media/models not found at {SHARED}", allow_module_level=True)


def _run_cli(*argv: str | Path) -> int:
    """`harmoview ARGV` through the console script's entry point (its one error path included)."""
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def default_stack():
    from datakit.faces import build_face_stack

    return build_face_stack("yunet", models_dir=MODELS)


@pytest.fixture(scope="module")
def obama_frames():
    return sample_frames(OBAMA_1, sample_fps=3.0)


def _facesim(stack, frames, references: dict[str, Path]) -> dict:
    return face_metrics(stack, frames, [embed_identity(stack, "p", references)])


def test_facesim_separates_people_default_stack(default_stack, obama_frames):
    same = _facesim(default_stack, obama_frames, {"frontal": STILLS / "obama.jpg"})
    other = _facesim(default_stack, obama_frames, {"frontal": STILLS / "biden.jpg"})
    assert same["detection_rate"] == 1.0 and same["num_frames"] == len(obama_frames) >= 10
    assert same["facesim"] > 0.9  # measured 0.96 (dlib: same person 0.95-0.999 on the stills)
    assert same["facesim"] - other["facesim"] > 0.08  # measured 0.96 vs 0.82
    assert same["identities"][0]["by_yaw_bin"]["frontal"]["num_frames"] == len(obama_frames)


def test_facesim_separates_people_arcface_pack(obama_frames):
    pytest.importorskip("insightface")
    from datakit.faces import build_face_stack

    stack = build_face_stack("insightface", models_dir=MODELS, insightface_pack=MODELS / "insightface_sc_int8")
    assert stack.embedder.name.endswith("arcface")
    same = _facesim(stack, obama_frames, {"frontal": STILLS / "obama.jpg"})
    other = _facesim(stack, obama_frames, {"frontal": STILLS / "biden.jpg"})
    assert same["facesim"] > 0.5 and other["facesim"] < 0.2  # measured 0.70 vs 0.05
    assert same["detection_rate"] == 1.0


def test_multiview_takes_the_best_view(default_stack, obama_frames):
    """FaceSim uses the frontal slot; multi-view FaceSim the best of all slots, per frame."""
    scores = _facesim(default_stack, obama_frames, {"frontal": STILLS / "biden.jpg", "left": STILLS / "obama.jpg"})
    identity = scores["identities"][0]
    assert identity["primary_view"] == "frontal"
    assert scores["facesim_multiview"] > scores["facesim"] + 0.08
    assert {frame["best_view"] for frame in identity["frames"]} == {"left"}
    assert yaw_in_range_rate(identity, (-20.0, 20.0)) == 1.0  # a frontal talking head
    assert yaw_in_range_rate(identity, (40.0, 90.0)) == 0.0


def test_cases_prompt_from_caption_else_default(tmp_path):
    """`cases` on the repo's sample run, one clip given a caption: its identity's case takes it as the prompt."""
    import shutil

    import pyarrow.parquet as pq

    from harmoview.evaluate.assemble import DEFAULT_PROMPT, cases_from_run

    run = shutil.copytree(Path(__file__).resolve().parents[3] / "manifests" / "sample", tmp_path / "run")
    refs = pq.read_table(run / "reference_views").to_pylist()
    captioned = sorted({r["identity_id"] for r in refs})[0]
    clip_id = next(r["clip_id"] for r in refs if r["identity_id"] == captioned)
    in_clip = {t["identity_id"] for t in pq.read_table(run / "tracks").to_pylist() if t["clip_id"] == clip_id}
    plain = sorted({r["identity_id"] for r in refs} - in_clip)[0]  # someone never seen in the captioned clip
    for file in (run / "clips").glob("*.parquet"):
        table = pq.read_table(file)
        captions = ["A woman smiles." if c == clip_id else None for c in table["clip_id"].to_pylist()]
        pq.write_table(table.set_column(table.schema.get_field_index("caption"), "caption", [captions]), file)
    cases = cases_from_run(run, [captioned, plain], tmp_path / "out" / "cases.jsonl")
    assert [c.prompt for c in cases] == ["A woman smiles.", DEFAULT_PROMPT]
    assert read_cases(tmp_path / "out" / "cases.jsonl") == cases
    with pytest.raises(CaseFileError, match="no reference views for identities nobody"):
        cases_from_run(run, ["nobody"], tmp_path / "out" / "x.jsonl")


def test_each_identity_finds_its_own_face(default_stack, tmp_path):
    """Two people in the video, two identities in the case: each is scored on the face that matches it."""
    frames = sample_frames(_still_video(tmp_path / "two.mp4", "two_people.jpg", 6, (640, 426)))
    stills = {"obama": STILLS / "obama.jpg", "biden": STILLS / "biden.jpg"}
    identities = [embed_identity(default_stack, name, {"frontal": path}) for name, path in stills.items()]
    scores = face_metrics(default_stack, frames, identities)
    threshold = default_stack.embedder.same_person_cosine
    assert [s["identity_id"] for s in scores["identities"]] == ["obama", "biden"]
    assert all(s["facesim"] > threshold for s in scores["identities"])
    assert scores["facesim"] > threshold


def test_yaw_bins_keep_profile_frames_apart(tmp_path):
    """Alex Lacamoire's profile close-up (Hamilton 20-81) lands in left_profile, where ArcFace still knows him."""
    pytest.importorskip("insightface")
    from datakit.faces import build_face_stack

    stack = build_face_stack("insightface", models_dir=MODELS, insightface_pack=MODELS / "insightface_sc_int8")
    frames = [f for f in sample_frames(VIDEOS / "hamilton_white_house.mp4", 6.0) if 22 <= f.index <= 80]
    profile = {}
    for still in ("alex-lacamoire.png", "lin-manuel-miranda.png", "obama.jpg"):
        scores = _facesim(stack, frames, {"frontal": STILLS / still})
        profile[still] = scores["identities"][0]["by_yaw_bin"]["left_profile"]
    assert profile["alex-lacamoire.png"]["num_frames"] >= 3
    # measured 0.21 vs 0.02 / 0.03 (the pack's README: his ~85 deg profile 0.12-0.30, others below 0.15)
    others = max(profile["lin-manuel-miranda.png"]["facesim_multiview"], profile["obama.jpg"]["facesim_multiview"])
    assert profile["alex-lacamoire.png"]["facesim_multiview"] > others + 0.1


def test_no_face_video_has_null_facesim(default_stack):
    frames = sample_frames(VIDEOS / "no_face.mp4", sample_fps=2.0)
    scores = _facesim(default_stack, frames, {"frontal": STILLS / "obama.jpg"})
    assert len(frames) >= 4
    assert scores["detection_rate"] == 0.0 and scores["num_frames_with_face"] == 0
    assert scores["facesim"] is None and scores["facesim_multiview"] is None


def test_reference_without_face_is_an_error_naming_it(default_stack, tmp_path):
    from harmoview.evaluate.metrics import ReferenceError

    blank = tmp_path / "wall.jpg"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(ReferenceError, match=r"wall\.jpg"):
        embed_reference(default_stack, blank)


def _still_video(
    path: Path, still: str = "obama.jpg", num_frames: int = 12, size: tuple[int, int] = (320, 240)
) -> Path:
    image = cv2.resize(cv2.imread(str(STILLS / still)), size)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for _ in range(num_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode())
    return path


def test_motion_orders_static_talking_and_moving(tmp_path, obama_frames):
    static = motion_px(sample_frames(_still_video(tmp_path / "static.mp4")))
    talking = motion_px(obama_frames)
    moving = motion_px(sample_frames(VIDEOS / "foreman_cif.mp4", sample_fps=2.0))
    assert static < 0.02 < talking < moving  # measured ~0, 0.12, 1.8 px per frame at 256 px width
    assert all(s.next_grey is not None for s in obama_frames)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random open_clip CLIP (vision + text) saved the hub way, for the text-alignment path."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    state = {k: v.contiguous() for k, v in CLIP(**cfg).state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def test_text_alignment_with_tiny_clip(tiny_clip, obama_frames, tmp_path):
    from harmoview.evaluate.text import ClipScorer

    frames = [s.bgr for s in obama_frames[:4]]
    first, again = ClipScorer(tiny_clip), ClipScorer(tiny_clip)
    score = first.score("a man speaks", frames)
    assert -1.0 <= score <= 1.0 and score == pytest.approx(again.score("a man speaks", frames), abs=1e-6)
    assert score != pytest.approx(first.score("a red car on a beach", frames), abs=1e-6)
    assert first.score("a man speaks", []) is None
    with pytest.raises(FileNotFoundError, match=r"open_clip_config\.json"):
        ClipScorer(tmp_path)


def _case(case_id: str = "c001", **extra) -> Case:
    refs = {"frontal": "refs/a_frontal.jpg", "left_profile": "refs/a_lp.jpg"}
    return Case(case_id, "A woman turns to her left.", [CaseIdentity("a", refs)], (40.0, 90.0), extra)


def test_case_file_round_trip_holds_a_benchmark(tmp_path):
    """100 cases over 52 identities, two-person cases included, survive write + read unchanged."""
    identities = [CaseIdentity(f"p{i:02d}", {"frontal": f"refs/p{i:02d}_f.jpg"}) for i in range(52)]
    cases = [
        Case(f"case_{n:03d}", f"prompt {n}", [identities[n % 52], identities[(n + 7) % 52]][: 1 + n % 2])
        for n in range(99)
    ]
    last = identities[51]
    cases.append(Case("case_099", "A woman turns to her left.", [last], (40.0, 90.0), {"note": "annotations are kept"}))
    path = write_cases(cases, tmp_path / "bench.jsonl")
    back = read_cases(path)
    assert back == cases
    assert len({i.identity_id for c in back for i in c.identities}) == 52
    assert back[-1].expected_yaw_deg == (40.0, 90.0) and back[-1].extra == {"note": "annotations are kept"}
    assert back[-1].reference_paths(tmp_path)[0]["frontal"] == tmp_path / "refs/p51_f.jpg"


GOOD = _case().to_json()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not JSON"),
        (json.dumps({**GOOD, "case_id": "a/b"}), "case_id must be"),
        (json.dumps({**GOOD, "prompt": " "}), "prompt must be"),
        (json.dumps({**GOOD, "identities": []}), "identities must be a non-empty list"),
        (json.dumps({**GOOD, "identities": [{"identity_id": "a", "references": {"top": "x.jpg"}}]}), "unknown view"),
        (json.dumps({**GOOD, "identities": [{"identity_id": "a", "references": {}}]}), "needs references"),
        (json.dumps({**GOOD, "expected_yaw_deg": [60, 10]}), "lo <= hi"),
        (json.dumps({**GOOD, "case_id": "first"}), "'first' is used twice"),
    ],
)
def test_case_file_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps({**GOOD, "case_id": "first"}) + "\n\n" + line + "\n")
    with pytest.raises(CaseFileError, match=message) as error:
        read_cases(path)
    assert f"{path}:3" in str(error.value)


def test_cli_reports_a_bad_case_file(tmp_path, capsys):
    (tmp_path / "cases.jsonl").write_text("[]\n")
    code = _run_cli("evaluate", "--cases", tmp_path / "cases.jsonl", "--videos", tmp_path, "--out", tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("harmoview evaluate: error: ") and "a case must be a JSON object" in err


def _identity_of_video(run: Path, file_name: str) -> str:
    import pyarrow.parquet as pq

    videos = pq.read_table(run / "videos").to_pylist()
    video_id = next(v["video_id"] for v in videos if v["path"] == file_name)
    tracks = pq.read_table(run / "tracks").to_pylist()
    return next(t["identity_id"] for t in tracks if t["video_id"] == video_id)


@pytest.fixture(scope="module")
def shipped_cases(shipped_run: Path, tmp_path_factory) -> tuple[Path, list[str]]:
    """`harmoview cases --per-clip` for the Obama identity and the single_face man of the shipped run."""
    chosen = [_identity_of_video(shipped_run, n) for n in ("obama_weekly_address_1.mp4", "single_face.mp4")]
    folder = tmp_path_factory.mktemp("cases")
    (folder / "ids.txt").write_text("# held-out identities\n" + "\n".join(chosen) + "\n")
    code = _run_cli(
        "cases", "--manifests", shipped_run, "--identities", folder / "ids.txt", "--out", folder / "cases.jsonl",
        "--per-clip",
    )  # fmt: skip
    assert code == 0
    return folder / "cases.jsonl", chosen


@pytest.mark.slow
def test_cases_take_references_from_chosen_identities_only(shipped_run: Path, shipped_cases):
    import pyarrow.parquet as pq

    path, chosen = shipped_cases
    cases = read_cases(path)
    assert {i.identity_id for c in cases for i in c.identities} == set(chosen)
    clip_ids = {c.extra["clip_id"] for c in cases if c.identities[0].identity_id == chosen[0]}
    assert len(clip_ids) >= 2  # Obama: both weekly addresses (one identity, issue 2's acceptance)
    best = {
        (r["identity_id"], r["view"]): r["crop"]
        for r in pq.read_table(shipped_run / "reference_views").to_pylist()
        if r["rank"] == 0
    }
    for case in cases:
        assert case.prompt  # no captions in the run: the default prompt
        for identity, paths in zip(case.identities, case.reference_paths(path.parent), strict=True):
            assert "frontal" in paths
            for view, file in paths.items():
                assert file.read_bytes() == best[(identity.identity_id, view)]


@pytest.mark.slow
def test_evaluate_scores_shipped_videos(shipped_run: Path, shipped_cases, tiny_clip, tmp_path):
    import pyarrow.parquet as pq

    path, chosen = shipped_cases
    videos = {v["video_id"]: v["path"] for v in pq.read_table(shipped_run / "videos").to_pylist()}
    obama_cases = [c for c in read_cases(path) if c.identities[0].identity_id == chosen[0]]
    clips = {c["clip_id"]: c["video_id"] for c in pq.read_table(shipped_run / "clips").to_pylist()}
    folder = tmp_path / "videos"
    folder.mkdir()
    for case in obama_cases:  # the generated videos: here the real footage each case came from
        (folder / f"{case.case_id}.mp4").symlink_to(VIDEOS / videos[clips[case.extra["clip_id"]]])
    no_face = Case("no_face", "An empty room.", obama_cases[0].identities)
    missing = Case("missing", "Not generated.", obama_cases[0].identities)
    (folder / "no_face.mp4").symlink_to(VIDEOS / "no_face.mp4")
    cases = write_cases([*obama_cases, no_face, missing], path.parent / "eval.jsonl")
    out = tmp_path / "report"
    code = _run_cli(
        "evaluate", "--cases", cases, "--videos", folder, "--out", out, "--models-dir", MODELS, "--clip", tiny_clip,
        "--sample-fps", "2",
    )  # fmt: skip
    assert code == 0
    for case in obama_cases:
        if "obama_weekly" not in videos[clips[case.extra["clip_id"]]]:
            continue
        result = json.loads((out / "cases" / f"{case.case_id}.json").read_text())
        assert result["status"] == "ok" and result["detection_rate"] == 1.0
        assert result["facesim"] > 0.9 and result["facesim_multiview"] >= result["facesim"]
        assert result["text_alignment"] is not None and result["motion_px"] > 0
    raw = (out / "cases" / "no_face.json").read_text()
    assert '"facesim": null' in raw and json.loads(raw)["detection_rate"] == 0.0
    assert json.loads((out / "cases" / "missing.json").read_text())["status"] == "missing_video"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["statuses"] == {"ok": len(obama_cases) + 1, "missing_video": 1}
    assert summary["metrics"]["facesim"]["num_cases"] == len(obama_cases)  # the no-face case has no FaceSim
    assert summary["metrics"]["detection_rate"]["num_cases"] == len(obama_cases) + 1
    page = (out / "index.html").read_text()
    assert page.count("<tr><td><b>") == len(obama_cases) + 2 and "http" not in page
    for src in re.findall(r'src="([^"]+)"', page):
        assert (out / src).is_file(), src
    assert cv2.imread(str(out / "overview.png")) is not None
