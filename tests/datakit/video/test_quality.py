"""Clip quality scores and clip filters on the shipped footage; `datakit filter` on a copy of a run."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from datakit import schema
from datakit.cli import main
from datakit.clips.filters import (
    CHEAP_FILTERS,
    DROP_REASONS,
    FILTER_FIELDS,
    FILTERS,
    MODEL_FILTERS,
    apply_clip_filters,
)
from datakit.config import BuildConfig
from datakit.video.quality import FLOW_WIDTH_PX, QualityScan
from pipelines.resume import GLOBAL_ONLY
from tests.conftest import MODELS, VIDEOS, build_in_subprocess


def _table(run: Path, name: str, columns=None) -> pa.Table:
    return ds.dataset(run / name).to_table(columns=columns)


def _clips_by_video(run: Path) -> dict[str, list[dict]]:
    paths = dict(zip(*_table(run, "videos", ["video_id", "path"]).to_pydict().values(), strict=True))
    out: dict[str, list[dict]] = {}
    for clip in sorted(_table(run, "clips").to_pylist(), key=lambda c: c["clip_id"]):
        out.setdefault(paths[clip["video_id"]], []).append(clip)
    return out


# --- scores on a real build ---------------------------------------------------------------------------


def test_every_clip_has_its_scores_in_range(shipped_run):
    for path, clips in _clips_by_video(shipped_run).items():
        for c in clips:
            assert 0.0 < c["brightness"] < 1.0, (path, c["clip_id"])
            assert c["sharpness"] > 0 and 0.0 <= c["face_share"] <= 1.0, (path, c["clip_id"])
            assert c["motion_score"] is not None and c["motion_score"] >= 0, (path, c["clip_id"])
            assert (c["main_face_px"] is None) == (c["num_faces"] == 0), (path, c["clip_id"])
            assert c["drop_reason"] in (None, *DROP_REASONS)


def test_carphone_face_is_smaller_than_a_weekly_address_face(shipped_run):
    clips = _clips_by_video(shipped_run)
    carphone = max(c["main_face_px"] for c in clips["carphone_qcif.mp4"])  # QCIF: measured 56 px
    weekly = [c["main_face_px"] for v in ("obama_weekly_address_1.mp4", "obama_weekly_address_2.mp4") for c in clips[v]]
    assert carphone < min(weekly)  # measured 259 and 352 px


def test_foreman_pan_moves_more_than_the_talking_heads(shipped_run):
    clips = _clips_by_video(shipped_run)
    # Foreman's second half is a hand-held pan away from the face: the clip that holds t = 9 s.
    (pan,) = [c for c in clips["foreman_cif.mp4"] if c["start_s"] <= 9.0 < c["end_s"]]
    weekly = [c["motion_score"] for v in ("obama_weekly_address_1.mp4", "obama_weekly_address_2.mp4") for c in clips[v]]
    assert pan["motion_score"] > 3 * max(weekly)  # measured 0.10 vs 0.009 and 0.003 frame widths per second


def test_no_face_video_has_no_face_share_and_is_dropped(shipped_run, shipped_build):
    clips = _clips_by_video(shipped_run)
    assert clips["no_face.mp4"], "no_face.mp4 still has its clips (one shot)"
    for c in clips["no_face.mp4"]:
        assert c["face_share"] == 0.0 and c["main_face_px"] is None
        assert c["drop_reason"] == "few_faces"
    # the face-less second shot of face_then_noface is dropped too; its first shot (a face) is kept
    first, *rest = clips["face_then_noface_hevc.mov"]
    assert first["drop_reason"] is None and first["face_share"] > 0.5
    assert rest and all(c["drop_reason"] == "few_faces" for c in rest)
    # the build summary counts the dropped clips by reason; no sample comes from a dropped clip
    table = _table(shipped_run, "clips", ["clip_id", "drop_reason"]).to_pylist()
    dropped = {c["clip_id"] for c in table if c["drop_reason"]}
    counts: dict[str, int] = {}
    for c in table:
        if c["drop_reason"]:
            counts[c["drop_reason"]] = counts.get(c["drop_reason"], 0) + 1
    assert shipped_build[1]["clips_dropped"] == counts
    assert not dropped & set(_table(shipped_run, "samples", ["clip_id"])["clip_id"].to_pylist())


# --- datakit filter on a copy of a run ----------------------------------------------------------------


def _digests(root: Path, parts=("faces", "_stage", "_done", "tracks", "identities", "reference_views")) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.relative_to(root).parts[0] in parts
        # the record of the global tables' files: rewritten whenever the global passes rewrite a table
        and str(p.relative_to(root)) != "_done/_global.json"
    }


def test_datakit_filter_changes_drop_reason_and_samples_without_recomputing(shipped_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(shipped_run, run)
    before = _digests(run)
    samples_before = _table(run, "samples", ["clip_id"])["clip_id"].to_pylist()
    assert main(["filter", "--manifests", str(run), "--set", "filter_min_brightness=0.2"]) == 0
    out = capsys.readouterr().out
    assert "too_dark" in out and f"samples : {len(samples_before)} ->" in out

    clips = _clips_by_video(run)
    dark = {c["clip_id"] for c in clips["hamilton_white_house.mp4"]}  # a dim stage: brightness 0.06-0.13
    assert all(c["drop_reason"] == "too_dark" for c in clips["hamilton_white_house.mp4"])
    for path, cs in clips.items():
        for c in cs:
            if c["brightness"] >= 0.2 and c["face_share"] >= 0.05:
                assert c["drop_reason"] is None, (path, c["clip_id"])
    samples_after = _table(run, "samples", ["clip_id"])["clip_id"].to_pylist()
    assert set(samples_after) == set(samples_before) - dark and len(samples_after) < len(samples_before)
    assert _digests(run) == before, "faces, tracks, identities and _stage must stay byte-identical"
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["filter_min_brightness"] == 0.2
    assert record["summary"]["num_samples"] == len(samples_after)

    # a config file sets it back (a full build config is fine: only its filter_* fields count)
    conf = tmp_path / "filters.toml"
    conf.write_text("sample_fps = 3.0\nfilter_min_brightness = 0.03\n")
    assert main(["filter", "--manifests", str(run), "--config", str(conf)]) == 0
    assert sorted(_table(run, "samples", ["clip_id"])["clip_id"].to_pylist()) == sorted(samples_before)
    assert main(["filter", "--manifests", str(run), "--set", "min_face_px=3"]) == 1  # not a filter setting
    assert main(["filter", "--manifests", str(run), "--set", "filter_min_motion"]) == 2  # not KEY=VALUE


def test_resumed_build_with_a_new_threshold_reruns_only_the_global_pass(shipped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(shipped_run, run)
    before = _digests(run, ("faces", "_stage", "_done"))  # the global passes rewrite the other tables
    summary = build_in_subprocess(src=VIDEOS, out=run, models_dir=MODELS, workers=1, filter_min_sharpness=200.0)
    assert summary["resumed_videos"] == sum(summary["videos"].values())  # no video was processed again
    assert summary["clips_dropped"].get("blurry", 0) >= 2  # carphone (93) and a hamilton move (79)
    assert _digests(run, ("faces", "_stage", "_done")) == before


def test_filter_fields_are_global_only_and_in_the_config():
    names = {f for f in BuildConfig.__dataclass_fields__ if f.startswith("filter_")}
    assert names == set(FILTER_FIELDS)
    assert names <= GLOBAL_ONLY


# --- apply_clip_filters on small tables ---------------------------------------------------------------


def _clips(rows: list[dict]) -> pa.Table:
    base = {
        "video_id": "v",
        "start_frame": 0,
        "end_frame": 10,
        "num_frames": 10,
        "shot": 0,
        "num_faces": 1,
        "num_tracks": 1,
    }
    full = [{"clip_id": f"c{i}", "start_s": 0.0, "end_s": 2.0, **base, **r} for i, r in enumerate(rows)]
    return pa.Table.from_pylist(full, schema=schema.CLIPS)


def _reasons(rows: list[dict], **limits) -> list[str | None]:
    return apply_clip_filters(_clips(rows), limits).column("drop_reason").to_pylist()


def test_first_failed_filter_in_fixed_order_wins():
    dark_and_short = {"end_s": 0.2, "brightness": 0.01, "face_share": 1.0, "sharpness": 100.0}
    dark_and_blurry = {"brightness": 0.01, "face_share": 1.0, "sharpness": 1.0}
    blurry = {"brightness": 0.5, "face_share": 1.0, "sharpness": 1.0}
    good = {"brightness": 0.5, "face_share": 1.0, "sharpness": 100.0, "motion_score": 0.05}
    limits = {"filter_min_duration_s": 0.5, "filter_min_brightness": 0.03, "filter_min_sharpness": 15.0}
    rows = [dark_and_short, dark_and_blurry, blurry, good]
    assert _reasons(rows, **limits) == ["too_short", "too_dark", "blurry", None]
    assert _reasons(rows) == [None] * 4  # no threshold = no filter
    assert _reasons(rows, filter_min_sharpness=None, filter_min_brightness=0.03) == ["too_dark", "too_dark", None, None]


def test_thresholds_are_inclusive_and_max_motion_drops_above():
    rows = [{"motion_score": 0.1}, {"motion_score": 0.5}, {"motion_score": 0.01}]
    assert _reasons(rows, filter_max_motion=0.1, filter_min_motion=0.02) == [None, "too_much_motion", "static"]
    assert _reasons([{"brightness": 0.03}], filter_min_brightness=0.03) == [None]


def test_null_scores_pass_except_a_missing_main_face_in_a_scored_clip():
    unscored = {}  # every score null: a run built before the scores existed keeps its clips
    no_face = {"face_share": 0.0, "brightness": 0.5, "sharpness": 100.0}  # scored, no face: main_face_px null
    limits = {name: 1e9 for name in FILTER_FIELDS if "_min_" in name and name != "filter_min_duration_s"}
    limits.update(filter_min_face_share=None, filter_min_brightness=None, filter_min_sharpness=None)
    assert _reasons([unscored, no_face], **limits, filter_max_motion=0.0) == [None, "small_face"]
    assert _reasons([unscored, no_face], filter_min_face_share=0.05) == [None, "few_faces"]
    assert _reasons([], filter_min_brightness=0.5) == []


def test_cheap_then_model_based_filters_give_the_reasons_of_one_pass():
    # The stage order filters twice: cheap filters before the captions, model-based ones after the scores.
    assert FILTERS == CHEAP_FILTERS + MODEL_FILTERS  # every cheap filter is checked before any model-based one
    dark_and_ugly = {"brightness": 0.01, "face_share": 1.0, "aesthetic_score": 1.0}
    ugly = {"brightness": 0.5, "face_share": 1.0, "aesthetic_score": 1.0}
    fine = {"brightness": 0.5, "face_share": 1.0, "aesthetic_score": 9.0}
    rows, limits = [dark_and_ugly, ugly, fine], {"filter_min_brightness": 0.03, "filter_min_aesthetic": 5.0}
    cheap = apply_clip_filters(_clips(rows), limits, CHEAP_FILTERS)
    assert cheap.column("drop_reason").to_pylist() == ["too_dark", None, None]
    both = apply_clip_filters(cheap, limits, MODEL_FILTERS, fresh=False)
    assert both.column("drop_reason").to_pylist() == _reasons(rows, **limits) == ["too_dark", "low_aesthetic", None]


def test_default_config_thresholds_apply(shipped_run):
    clips = _table(shipped_run, "clips")
    again = apply_clip_filters(clips, BuildConfig(src=".", out="."))
    assert again.column("drop_reason").to_pylist() == clips.column("drop_reason").to_pylist()


# --- the scan's measures on real frames -------------------------------------------------------------


def _frames(name: str, every: int, limit: int) -> list[tuple[int, float, np.ndarray]]:
    out = []
    with av.open(str(VIDEOS / name)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= limit:
                break
            if i % every == 0:
                out.append((i, float(frame.time), frame.to_ndarray(format="bgr24")))
    return out


def test_motion_does_not_depend_on_resolution_or_sampling_rate():
    import cv2

    def motion(frames, scale=1.0) -> float:
        scan = QualityScan()
        for index, t, bgr in frames:
            size = (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale))
            scan.add(index, t, cv2.resize(bgr, size, interpolation=cv2.INTER_AREA) if scale != 1 else bgr)
        (clip,) = scan.clip_scores([0], [], [], [])
        return clip["motion_score"]

    pan = _frames("foreman_cif.mp4", 4, 300)[-20:]  # ~6 fps over the pan (frames ~220-300)
    full, half = motion(pan), motion(pan, 0.5)
    sparse = motion(pan[::2])  # ~3 fps
    assert full > 0.03 and half == pytest.approx(full, rel=0.25) and sparse == pytest.approx(full, rel=0.35)
    assert FLOW_WIDTH_PX == 160


def test_scan_keeps_no_pixels_but_one_small_frame_and_skips_cuts():
    frames = _frames("obama_weekly_address_1.mp4", 10, 60)
    scan = QualityScan()
    for k, (index, t, bgr) in enumerate(frames):
        scan.add(index, t, bgr, cut=k == 3)
    assert len(scan) == len(frames) and scan._prev[2].shape[1] == FLOW_WIDTH_PX
    assert np.isnan(scan.motion[0]) and np.isnan(scan.motion[3]) and scan.prev_index[3] == -1
    # two clips split at frame 30: a pair across the boundary counts for neither
    first, second = scan.clip_scores([0, 30], [0, 10, 10, 40], ["a", "a", "b", "c"], [100.0, 120.0, 50.0, 80.0])
    assert first["main_face_px"] == 110.0 and second["main_face_px"] == 80.0  # track "a" has most faces
    assert first["face_share"] == pytest.approx(2 / 3) and second["face_share"] == pytest.approx(1 / 3)
    assert 0.2 < first["brightness"] < 0.6 and first["sharpness"] > 100


# --- optional open_clip scores ------------------------------------------------------------------------


def write_tiny_open_clip(root: Path) -> tuple[Path, Path]:
    """A tiny random open_clip model folder (hub layout) and a tiny LAION-v2-layout aesthetic head."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    folder = root / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    state = {k: v.contiguous() for k, v in CLIP(**cfg).state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    head = root / "aesthetic.pth"  # LAION aesthetic predictor v2 layout (Linear layers 0, 2, 4, 6, 7), tiny
    sizes = [16, 12, 8, 6, 4, 1]
    state = {}
    for (i, o), n in zip(itertools.pairwise(sizes), (0, 2, 4, 6, 7), strict=True):
        state[f"layers.{n}.weight"], state[f"layers.{n}.bias"] = torch.randn(o, i), torch.randn(o)
    torch.save(state, head)
    return folder, head


def test_clip_scorer_plumbing_with_a_tiny_random_open_clip(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")

    from datakit.clips.open_clip import ClipScorer

    folder, head = write_tiny_open_clip(tmp_path)
    frames = [bgr for _, _, bgr in _frames("obama_weekly_address_1.mp4", 30, 90)]
    scorer = ClipScorer(folder, head)
    clip_scores, aesthetic = scorer.score(frames, ["a man speaks", None, "a man in a suit"])
    assert clip_scores[1] is None and all(-1.0 <= s <= 1.0 for s in (clip_scores[0], clip_scores[2]))
    assert all(isinstance(a, float) for a in aesthetic)
    again = ClipScorer(folder, head).score(frames[:1], ["a man speaks"])
    assert again[0][0] == pytest.approx(clip_scores[0], abs=1e-5)  # the same weights came back from disk
    batch = scorer({"frame": np.array(frames, dtype=object), "caption": np.array(["x", None, "y"], dtype=object)})
    assert np.isnan(batch["clip_score"][1]) and batch["aesthetic_score"].dtype == np.float32
    assert ClipScorer(folder).score(frames[:1], [None]) == ([None], [None])  # no head: no aesthetic score
    with pytest.raises(FileNotFoundError, match="open_clip_config"):
        ClipScorer(tmp_path)
    with pytest.raises(ValueError, match="embedding"):
        bad = tmp_path / "bad.pth"
        torch.save({"weight": torch.randn(1, 7), "bias": torch.randn(1)}, bad)
        ClipScorer(folder, bad)


def test_open_clip_scores_reach_clips_and_filters_on_a_resumed_build(shipped_run, tmp_path):
    """The score stage of a build: aesthetic scores for every kept clip, a filter on them, resumable."""
    pytest.importorskip("open_clip")
    folder, head = write_tiny_open_clip(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(shipped_run, run)
    first = build_in_subprocess(
        src=VIDEOS, out=run, models_dir=MODELS, workers=1, clip_model_dir=folder, aesthetic_head=head
    )
    clips = _table(run, "clips").to_pylist()
    kept = [c for c in clips if c["drop_reason"] is None]
    assert kept and all(c["aesthetic_score"] is not None for c in kept)
    assert all(c["clip_score"] is None for c in clips)  # no captions: no image-text score
    assert first["resumed_videos"] == sum(first["videos"].values())
    scores = sorted(c["aesthetic_score"] for c in kept)
    middle = (scores[0] + scores[-1]) / 2
    again = build_in_subprocess(
        src=VIDEOS,
        out=run,
        models_dir=MODELS,
        workers=1,
        clip_model_dir=folder,
        aesthetic_head=head,
        filter_min_aesthetic=middle,
    )
    low = {c["clip_id"] for c in kept if c["aesthetic_score"] < middle}
    dropped = {c["clip_id"] for c in _table(run, "clips").to_pylist() if c["drop_reason"] == "low_aesthetic"}
    assert low and dropped == low and again["clips_dropped"]["low_aesthetic"] == len(low)
    stored = ds.dataset(run / "_stage" / "clip_scores").to_table()
    assert stored.num_rows == len(kept)  # the second build scored nothing again
