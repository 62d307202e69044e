"""Preview sampling and writing: the Euler integrator, CFG, determinism, mp4 / PNG output, render_preview."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from harmoview import build_model, get_config
from harmoview.data.video_io import write_contact_png, write_video
from harmoview.model.encoders import Encoders
from harmoview.model.references import References
from harmoview.sampling import Conditions, Guidance, sample
from harmoview.testing import tiny_vit_layers, write_tiny_encoders
from harmoview.train.inputs import EncodedBatch, encode_batch
from harmoview.train.preview import render_preview

LATENT_SHAPE = (2, 4, 2, 4, 4)  # (B, C, f, h, w)


class StraightPath(nn.Module):
    """The exact velocity of the straight path from the current point to a fixed endpoint.

    On x_s = (1 - s) x0 + s eps the velocity eps - x0 equals (x_s - x0) / s, so returning that makes Euler
    exact: the sampler must land on x0 whatever the step count or shift. A non-zero text selects the
    endpoint `x_cond`, an all-zero text (the null prompt) `x_null`, which lets CFG be checked in closed form.
    Records its mode on every call (the sampler must run it in eval mode).
    """

    def __init__(self, x_cond: torch.Tensor, x_null: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("x_cond", x_cond)
        self.register_buffer("x_null", x_null)
        self.modes: list[bool] = []

    def forward(self, x, t, text, references=None, vit_features=None):
        self.modes.append(self.training)
        assert t.shape == (x.shape[0],)
        sigma = (t / 1000).reshape(-1, 1, 1, 1, 1)  # (B, 1, 1, 1, 1), > 0 at every evaluated step
        endpoint = self.x_cond if text.abs().sum() > 0 else self.x_null
        return (x - endpoint) / sigma


def _straight_path() -> tuple[StraightPath, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    model = StraightPath(torch.randn(LATENT_SHAPE, generator=g), torch.randn(LATENT_SHAPE, generator=g))
    return model, torch.ones(LATENT_SHAPE[0], 3, 24)


def _sample(model, text, *, seed=0, num_steps=4, shift=5.0, guidance=1.0, null_text=None, references=None, vit=None,
            **kwargs):  # fmt: skip
    """The project's sampler (Euler) with text guidance only, as previews use it."""
    negative = text if null_text is None else null_text.expand_as(text)
    cond = Conditions(text=text, negative_text=negative, references=references, vit_features=vit)
    generator = torch.Generator().manual_seed(seed)
    return sample(
        model, cond, shape=LATENT_SHAPE if references is None else (1, *LATENT_SHAPE[1:]), num_steps=num_steps,
        shift=shift, generator=generator, guidance=Guidance(text_scale=guidance), **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(("num_steps", "shift"), [(1, 1.0), (3, 5.0), (10, 3.0)])
def test_euler_lands_on_the_endpoint_of_a_straight_path(num_steps, shift):
    model, text = _straight_path()
    latents = _sample(model, text, num_steps=num_steps, shift=shift)
    torch.testing.assert_close(latents, model.x_cond, atol=1e-5, rtol=1e-5)
    assert len(model.modes) == num_steps


def test_model_runs_in_eval_mode_and_modes_are_restored():
    model, text = _straight_path()
    model.train()
    frozen = nn.Linear(1, 1).eval()  # a submodule deliberately in eval mode stays so
    model.frozen = frozen
    _sample(model, text)
    assert model.modes and not any(model.modes)
    assert model.training and not frozen.training


def test_guidance_extrapolates_from_the_null_prompt():
    model, text = _straight_path()
    null_text = torch.zeros(3, 24)  # (Lt, Dt): the empty prompt's features broadcast over the batch
    latents = _sample(model, text, guidance=3.0, null_text=null_text)
    expected = model.x_null + 3.0 * (model.x_cond - model.x_null)  # the guided field is the straight path to it
    torch.testing.assert_close(latents, expected, atol=1e-4, rtol=1e-4)
    assert len(model.modes) == 2 * 4  # conditional and unconditional pass per step


def test_guidance_one_is_plain_sampling():
    model, text = _straight_path()
    plain = _sample(model, text)
    calls = len(model.modes)
    assert torch.equal(_sample(model, text, guidance=1.0, null_text=torch.zeros(3, 24)), plain)
    assert len(model.modes) == 2 * calls  # no unconditional pass at guidance 1


# --- the real tiny model and encoders ----------------------------------------------------------------


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> Encoders:
    paths = write_tiny_encoders(tmp_path_factory.mktemp("encoders"))
    return Encoders.load(paths, text_len=16, vit_layers=tiny_vit_layers)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    model, _ = build_model(get_config("tiny"))
    return model.train()  # as the trainer holds it


@pytest.fixture(scope="module")
def enc(encoders) -> EncodedBatch:
    g = torch.Generator().manual_seed(0)
    present = torch.zeros(1, 1, 5, dtype=torch.bool)
    present[0, 0, 0] = True  # frontal only
    batch = {
        "sample_ids": ["a"],
        "video": torch.rand(1, 3, 5, 32, 32, generator=g) * 2 - 1,
        "captions": ["a man"],
        "ref_pixels": torch.rand(1, 1, 5, 3, 32, 32, generator=g) * 2 - 1,
        "ref_present": present,
    }
    return encode_batch(batch, encoders, with_refs=True, with_vit=True)


def _render(model, encoders, enc, out_dir, *, step=10, seed=0, **kwargs):
    kwargs = {"num_steps": 3, "shift": 5.0, "fps": 8.0, "references_on": True, "mfi_on": True} | kwargs
    return render_preview(model, encoders, enc, out_dir=out_dir, step=step, seed=seed, **kwargs)


def test_tiny_model_sampling_is_deterministic_for_a_seed(model, enc):
    refs = References(latents=enc.ref_latents, present=enc.ref_present)
    kwargs = {"shape": (1, *enc.latents.shape[1:]), "num_steps": 3, "shift": 5.0}
    cond = Conditions(text=enc.text, negative_text=enc.text, references=refs, vit_features=enc.vit)
    first = sample(model, cond, generator=torch.Generator().manual_seed(7), **kwargs)
    again = sample(model, cond, generator=torch.Generator().manual_seed(7), **kwargs)
    other = sample(model, cond, generator=torch.Generator().manual_seed(8), **kwargs)
    assert first.shape == enc.latents.shape and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert model.training


def _decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return stream.codec_context.name, stream.average_rate, np.stack(frames)


@pytest.mark.parametrize(("height", "width"), [(32, 48), (17, 23)])
def test_write_video_decodes_to_the_frames_written(tmp_path, height, width):
    ramp = torch.linspace(-1, 1, width).expand(3, 7, height, width).clone()  # smooth: little coding loss
    path = write_video(ramp, tmp_path / "v.mp4", fps=12.0)
    codec, rate, frames = _decode(path)
    assert codec in ("h264", "mpeg4") and rate == 12
    # odd sizes are padded to even by repeating the last row / column
    assert frames.shape == (7, height + height % 2, width + width % 2, 3)
    expected = ((ramp[:, 0].permute(1, 2, 0).numpy() + 1) * 127.5).round()
    assert np.abs(frames[3, :height, :width].astype(float) - expected).mean() < 4
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary left behind


def test_contact_sheet_puts_frames_side_by_side(tmp_path):
    frames = torch.stack([torch.full((3, 6, 10), -1 + 0.5 * i) for i in range(4)], dim=1)  # (3, 4, 6, 10)
    with Image.open(write_contact_png(frames, tmp_path / "c.png")) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (6, 40, 3)
    assert [int(pixels[0, 10 * i, 0]) for i in range(4)] == [0, 64, 128, 191]  # round((v + 1) * 127.5)
    with Image.open(write_contact_png(frames, tmp_path / "few.png", max_frames=2)) as image:
        assert image.size == (20, 6)  # the first and the last frame


def test_render_preview_writes_video_contact_sheet_and_target(tmp_path, model, encoders, enc):
    path = _render(model, encoders, enc, tmp_path)
    folder = tmp_path / "previews"
    assert path == folder / "step_00000010.mp4"
    assert sorted(p.name for p in folder.iterdir()) == [
        "step_00000010.mp4", "step_00000010.png", "target.json", "target.mp4", "target.png",
    ]  # fmt: skip
    for video in (path, folder / "target.mp4"):
        assert _decode(video)[2].shape == (5, 32, 32, 3)  # 2 latent frames -> 5 frames of 32x32
    for png in (path.with_suffix(".png"), folder / "target.png"):
        with Image.open(png) as image:
            assert image.size == (5 * 32, 32)
    assert json.loads((folder / "target.json").read_text()) == {"sample_id": "a"}
    assert model.training


def test_render_preview_is_deterministic_for_a_seed(tmp_path, model, encoders, enc):
    def sheet(step, seed):
        png = _render(model, encoders, enc, tmp_path, step=step, seed=seed).with_suffix(".png")
        with Image.open(png) as image:
            return np.asarray(image.convert("RGB"))

    assert np.array_equal(sheet(1, seed=3), sheet(2, seed=3))
    assert not np.array_equal(sheet(1, seed=3), sheet(3, seed=4))


def test_render_preview_refuses_conditions_the_batch_lacks(tmp_path, model, encoders, enc):
    bare = EncodedBatch(enc.sample_ids, enc.latents, enc.text, enc.ref_present)
    with pytest.raises(ValueError, match="reference latents"):
        _render(model, encoders, bare, tmp_path)
    with pytest.raises(ValueError, match="ViT features"):
        _render(model, encoders, bare, tmp_path, references_on=False)
    path = _render(model, encoders, bare, tmp_path, references_on=False, mfi_on=False)  # text-to-video
    assert path.is_file()


def test_render_preview_without_write_only_samples(tmp_path, model, encoders, enc):
    path = _render(model, encoders, enc, tmp_path, write=False)
    assert path == tmp_path / "previews" / "step_00000010.mp4"
    assert not (tmp_path / "previews").exists()


def test_write_video_falls_back_to_mpeg4(tmp_path, monkeypatch):
    import harmoview.data.video_io as video_io

    monkeypatch.setattr(video_io, "_CODECS", ("no-such-encoder", "mpeg4"))
    path = write_video(torch.zeros(3, 5, 16, 16), tmp_path / "v.mp4", fps=25.0)
    codec, _, frames = _decode(path)
    assert codec == "mpeg4" and frames.shape == (5, 16, 16, 3)


def test_bf16_autocast_keeps_float32_latents(model, enc):
    cond = Conditions(text=enc.text, negative_text=enc.text)
    latents = sample(
        model, cond, shape=(1, *enc.latents.shape[1:]), num_steps=2, shift=5.0,
        generator=torch.Generator().manual_seed(0), autocast_dtype=torch.bfloat16,
    )  # fmt: skip
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()


def test_render_preview_guidance_needs_the_empty_prompt(tmp_path, model, encoders, enc):
    with pytest.raises(ValueError, match="null_text"):
        _render(model, encoders, enc, tmp_path, guidance=2.0)
