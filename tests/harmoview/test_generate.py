"""`harmoview generate`: sampler, three-way guidance, HarmoViewPipeline, photo routing and the CLI, on a tiny
random checkpoint and tiny encoders (CPU), with real photos from ../shared/media/stills."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from harmoview import build_model, get_config, save_checkpoint
from harmoview.pipeline import Guidance, HarmoViewPipeline, guided_velocity, sample, sidecar_path
from harmoview.testing import tiny_vit_layers

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
STILLS = SHARED / "media" / "stills"
MODELS = SHARED / "models"
SMALL = {"num_frames": 5, "height": 32, "width": 48, "steps": 2, "progress": False}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny checkpoint with every weight perturbed: zero-initialised heads and gates would hide conditions."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = build_model(get_config("tiny"))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def pipe(ckpt, tiny_encoders) -> HarmoViewPipeline:
    return HarmoViewPipeline.from_pretrained(
        ckpt, tiny_encoders, device="cpu", text_len=16, vit_layers=tiny_vit_layers
    )  # fmt: skip


def _grey(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # (F, H, W, 3)


# --- sampler and guidance ----------------------------------------------------------------------------


def test_scales_one_equal_plain_conditional_prediction(pipe):
    cond = pipe.conditions("a man talks", [{"frontal": _grey(), "left": _grey(1)}], negative_prompt="blurry")
    x = torch.randn(1, 4, 2, 4, 6)
    calls = []
    hook = pipe.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        plain = guided_velocity(pipe.model, x, 700.0, cond, Guidance())
        assert len(calls) == 1  # the extra forwards are skipped
        direct = pipe.model(x, torch.tensor([700.0]), cond.text, cond.references, cond.vit_features)
        torch.testing.assert_close(plain, direct.float())
        guided = guided_velocity(pipe.model, x, 700.0, cond, Guidance(ref_scale=2.0, text_scale=3.0))
        assert len(calls) == 4 + 1  # v_ref_text, v_ref, v_uncond (+ the direct call)
    finally:
        hook.remove()
    assert not torch.allclose(guided, plain)


def test_three_way_guidance_formula(pipe):
    cond = pipe.conditions("a man talks", [{"frontal": _grey()}])
    x, t, s_ref, s_text = torch.randn(1, 4, 2, 4, 6), torch.tensor([300.0]), 1.5, 4.0
    m = pipe.model.eval()
    v_rt = m(x, t, cond.text, cond.references, cond.vit_features)
    v_r = m(x, t, cond.negative_text, cond.references, cond.vit_features)
    v_u = m(x, t, cond.negative_text, None, None)
    expected = v_u + s_ref * (v_r - v_u) + s_text * (v_rt - v_r)
    got = guided_velocity(m, x, 300.0, cond, Guidance(ref_scale=s_ref, text_scale=s_text))
    torch.testing.assert_close(got, expected)


def test_expert_switch_at_boundary(pipe):
    """The low-noise expert answers below t = 875 only: the Euler steps with t < 875 see it."""
    cond = pipe.conditions("a person", [])
    seen = {"high": [], "low": []}

    class Expert(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x, t, *rest):
            seen[self.name].append(float(t[0]))
            return torch.zeros_like(x)

    sample(
        Expert("high"), cond, shape=(1, 4, 1, 2, 2), num_steps=6, generator=torch.Generator().manual_seed(0),
        shift=5.0, low_noise_model=Expert("low"),
    )  # fmt: skip
    assert seen["high"] and seen["low"]
    assert min(seen["high"]) >= 875 > max(seen["low"])


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_samplers_run_and_seed_reproduces(pipe, sampler):
    refs = [{"frontal": _grey()}]
    a = pipe("a man talks", refs, sampler=sampler, seed=1, **SMALL)
    b = pipe("a man talks", refs, sampler=sampler, seed=1, **SMALL)
    c = pipe("a man talks", refs, sampler=sampler, seed=2, **SMALL)
    assert a.shape == (3, 5, 32, 48)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_bad_sizes_are_clear_errors(pipe):
    with pytest.raises(ValueError, match="frames 4"):
        pipe("x", [], **{**SMALL, "num_frames": 4})
    with pytest.raises(ValueError, match="height 20"):
        pipe("x", [], **{**SMALL, "height": 20})
    with pytest.raises(ValueError, match="unknown view"):
        pipe("x", [{"top": _grey()}], **SMALL)


def test_save_writes_mp4_and_sidecar(pipe, tmp_path):
    frames = pipe("a man talks", [{"frontal": _grey()}], sampler="euler", seed=3, **SMALL)
    path = pipe.save(frames, tmp_path / "out.mp4", fps=8, sidecar={"references": [{"frontal": "grey.png"}]})
    decoded = _decode(path)
    assert decoded.shape == (5, 32, 48, 3)
    record = json.loads(sidecar_path(path).read_text())
    assert record["seed"] == 3 and record["sampler"] == "euler" and record["steps"] == 2
    assert record["references"] == [{"frontal": "grey.png"}] and record["model"].endswith("tiny")


def test_references_change_the_video(pipe):
    a = pipe("a man talks", [{"frontal": _grey(0)}], sampler="euler", seed=1, **SMALL)
    b = pipe("a man talks", [{"frontal": _grey(5)}], sampler="euler", seed=1, **SMALL)
    c = pipe("a man talks", [], sampler="euler", seed=1, **SMALL)
    assert not torch.equal(a, b) and not torch.equal(a, c)


# --- reference photos -> view slots ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack():
    if not MODELS.is_dir() or not STILLS.is_dir():
        pytest.skip(f"shared media/models not found at {SHARED}")
    from harmoview.photo_refs import load_face_stack

    return load_face_stack(MODELS)


@pytest.fixture(scope="module")
def hamilton_frame(tmp_path_factory) -> Path:
    """Frame 30 of the labelled Hamilton close-up: Alex Lacamoire in profile facing frame-left (the datakit
    tests' left_profile face) on the right, a frontal face in the audience on the left."""
    with av.open(str(SHARED / "media" / "videos" / "hamilton_white_house.mp4")) as container:
        frame = next(f for i, f in enumerate(container.decode(video=0)) if i == 30).to_image()
    path = tmp_path_factory.mktemp("photos") / "hamilton30.png"
    frame.save(path)
    return path


def test_frontal_photo_routes_to_frontal(stack):
    from harmoview.photo_refs import PhotoRef, route_photo

    obama = route_photo(PhotoRef.parse(str(STILLS / "obama.jpg")), stack)
    assert obama.slot == "frontal" and abs(obama.yaw_deg) < 20
    # alex-lacamoire.png is a near-frontal portrait (yaw ~ -14 deg): it lands in frontal too
    assert route_photo(PhotoRef.parse(str(STILLS / "alex-lacamoire.png")), stack).slot == "frontal"
    biden = route_photo(PhotoRef.parse(str(STILLS / "biden.jpg")), stack)  # 2204 px tall: shrunk for detection
    assert biden.slot == "frontal" and max(biden.image.size) <= 256


def test_fallback_stack_without_models_dir(monkeypatch):
    """No models directory: datakit's pip-only dlib stack, the same choice `datakit build` makes."""
    from harmoview.photo_refs import PhotoRef, load_face_stack, route_photo

    if not STILLS.is_dir():
        pytest.skip(f"shared media not found at {SHARED}")
    monkeypatch.delenv("DATAKIT_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(SHARED / "no-such-cache"))  # a user's fetched models must not count
    fallback = load_face_stack(None)
    assert fallback.name.startswith("dlib")
    assert route_photo(PhotoRef(path=STILLS / "obama.jpg"), fallback).slot == "frontal"


def test_face_index_and_profile_routing(stack, hamilton_frame):
    from harmoview.photo_refs import PhotoRef, route_photo

    ref = PhotoRef.parse(str(hamilton_frame))
    with pytest.raises(ValueError, match=r"2 faces in reference photo .*hamilton30\.png.*--face"):
        route_photo(ref, stack)
    profile = route_photo(ref, stack, face=1)  # the close-up, right of the audience face
    assert profile.slot == "left_profile" and profile.yaw_deg > 60
    assert route_photo(ref, stack, face=0).slot == "frontal"
    with pytest.raises(ValueError, match="--face 2"):
        route_photo(ref, stack, face=2)


def test_view_override_and_best_face_per_slot(stack):
    from harmoview.photo_refs import PhotoRef, references_from_photos, route_identities

    assert PhotoRef.parse("left:a.jpg") == PhotoRef(path=Path("a.jpg"), view="left")
    assert PhotoRef.parse("dir:with/colon.jpg").view is None
    with pytest.raises(ValueError, match="unknown view"):
        PhotoRef.parse("Front:a.jpg")
    obama, lin = STILLS / "obama.jpg", STILLS / "lin-manuel-miranda.png"  # face_px ~ 273 and ~ 314
    routed = route_identities([[str(obama), str(lin)], [f"right:{obama}"]], stack=stack)
    assert list(routed[0]) == ["frontal"] and routed[0]["frontal"].path == lin  # the larger face is kept
    assert list(routed[1]) == ["right"] and routed[1]["right"].chosen_by_hand
    images = references_from_photos([[str(obama)]], stack=stack)
    assert list(images[0]) == ["frontal"] and isinstance(images[0]["frontal"], Image.Image)


def test_photo_errors_name_the_file(stack, tmp_path):
    from harmoview.photo_refs import PhotoRef, route_photo

    grey = tmp_path / "grey.jpg"
    Image.new("RGB", (320, 240), (128, 128, 128)).save(grey)
    with pytest.raises(ValueError, match=r"no face found in reference photo .*grey\.jpg"):
        route_photo(PhotoRef(path=grey), stack)
    with pytest.raises(ValueError, match=r"2 faces in reference photo .*two_people\.jpg"):
        route_photo(PhotoRef(path=STILLS / "two_people.jpg"), stack)
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        route_photo(PhotoRef(path=tmp_path / "missing.jpg"), stack)


# --- the command -------------------------------------------------------------------------------------


def _parse(argv: list[str]):
    import argparse

    from harmoview.cli.generate import add_generate_parser

    parser = argparse.ArgumentParser(prog="harmoview")
    add_generate_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_identity_groups_parse():
    args = _parse(["generate", "--ckpt", "c", "--prompt", "p", "--out", "o.mp4", "--ref", "a.jpg",
                   "--ref", "left:b.jpg", "--identity", "--ref", "c.jpg"])  # fmt: skip
    assert args.identities == [["a.jpg", "left:b.jpg"], ["c.jpg"]]


def test_cli_end_to_end(stack, ckpt, tiny_encoders, hamilton_frame, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    encoders = ["--vae", str(tiny_encoders.vae), "--text-encoder", str(tiny_encoders.text_encoder),
                "--tokenizer", str(tiny_encoders.tokenizer), "--vit", str(tiny_encoders.vit),
                "--vit-layers", *map(str, tiny_vit_layers), "--text-len", "16"]  # fmt: skip
    sampling = ["--prompt", "a man talks", "--frames", "5", "--height", "32", "--width", "48", "--steps", "2",
                "--sampler", "euler", "--seed", "7", "--quiet", "--device", "cpu"]  # fmt: skip
    common = ["generate", "--ckpt", str(ckpt), *encoders, *sampling, "--models-dir", str(MODELS)]
    refs = ["--ref", str(STILLS / "obama.jpg"), "--identity", "--ref", f"left:{STILLS / 'biden.jpg'}"]
    args = _parse([*common, *refs, "--out", str(out)])
    assert args.func(args) == 0
    assert _decode(out).shape == (5, 32, 48, 3)
    record = json.loads(sidecar_path(out).read_text())
    assert [list(views) for views in record["references"]] == [["frontal"], ["left"]]
    assert record["references"][0]["frontal"]["path"].endswith("obama.jpg")
    assert record["seed"] == 7 and record["prompt"] == "a man talks" and record["face_stack"].startswith("yunet")

    bad = _parse([*common, "--ref", str(STILLS / "two_people.jpg"), "--out", str(tmp_path / "bad.mp4")])
    assert bad.func(bad) == 1
    assert "two_people.jpg" in capsys.readouterr().err and not (tmp_path / "bad.mp4").exists()
    missing = _parse(["generate", "--ckpt", str(tmp_path / "nope"), *common[3:], "--out", str(out)])
    assert missing.func(missing) == 1
    assert "--ckpt" in capsys.readouterr().err


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_samplers_integrate_an_exact_flow_to_the_data(pipe, sampler):
    """With the exact velocity of a one-point data set, v = (x - x0) / sigma, both samplers end at x0."""
    x0 = torch.randn(1, 4, 1, 2, 2)

    class Oracle(torch.nn.Module):
        def forward(self, x, t, *rest):
            return (x - x0) / (t[0] / 1000).clamp_min(1e-3)

    cond = pipe.conditions("a person", [])
    out = sample(Oracle(), cond, shape=x0.shape, num_steps=8, generator=torch.Generator().manual_seed(0),
                 sampler=sampler, shift=5.0)  # fmt: skip
    # UniPC feeds the model diffusers' integer timesteps (999 for sigma 1): near, not exact
    torch.testing.assert_close(out, x0, atol=1e-4 if sampler == "euler" else 5e-3, rtol=0)
