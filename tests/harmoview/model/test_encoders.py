"""Encoders: tiny random VAE / umT5 / tokenizer / ViT written and reloaded through the real from_pretrained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from harmoview import get_config
from harmoview.model.encoders import EncoderPaths, Encoders, vae_strides
from harmoview.testing import tiny_vit_layers, write_tiny_encoders, write_tiny_vae

TEXT_LEN = 16
VIDEO = (2, 3, 5, 32, 32)  # 5 frames of 32x32 -> 2 latent frames of 4x4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("encoders")
    write_tiny_encoders(root)
    return root


def _paths(root: Path) -> EncoderPaths:
    return EncoderPaths.from_wan_dir(root, vit=root / "vit")


def _load(root: Path, **kwargs) -> Encoders:
    kwargs = {"text_len": TEXT_LEN, "vit_layers": tiny_vit_layers} | kwargs
    return Encoders.load(_paths(root), **kwargs)


@pytest.fixture(scope="module")
def enc(tiny_dir) -> Encoders:
    return _load(tiny_dir)


def _video(seed: int = 0, shape=VIDEO) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_tiny_folders_reload_with_their_sizes(enc):
    assert (enc.temporal_stride, enc.spatial_stride, enc.z_dim) == (4, 8, 4)
    assert (enc.text_dim, enc.text_len, enc.vit_dim, enc.vit_num_levels) == (24, TEXT_LEN, 16, 2)
    for module in (enc.vae, enc.text_encoder, enc.vit):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    enc.check_model(get_config("tiny"))  # the tiny DiT fits the tiny encoders


def test_writing_is_deterministic_and_leaves_the_global_rng_alone(tmp_path, tiny_dir):
    state = torch.random.get_rng_state()
    write_tiny_encoders(tmp_path)
    assert torch.equal(state, torch.random.get_rng_state())
    files = sorted(p.relative_to(tiny_dir) for p in tiny_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in files:
        assert (tiny_dir / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_video_latents_shapes_and_round_trip(enc):
    latents = enc.encode_video(_video())
    assert latents.shape == (2, 4, 2, 4, 4) and latents.dtype == torch.float32
    decoded = enc.decode_video(latents)
    assert decoded.shape == VIDEO and decoded.dtype == torch.float32
    assert decoded.min() >= -1 and decoded.max() <= 1
    # an image is a 1-frame video: the causal VAE encodes the first frame on its own
    images = enc.encode_images(_video()[:, :, 0])
    assert images.shape == (2, 4, 4, 4)
    torch.testing.assert_close(images, latents[:, :, 0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        enc.encode_video(_video(shape=(1, 3, 4, 32, 32)))
    with pytest.raises(ValueError, match="multiple of the VAE stride 8"):
        enc.encode_video(_video(shape=(1, 3, 5, 36, 32)))


def test_latents_are_the_normalised_posterior_mean(enc):
    video = _video(1)
    mean = torch.tensor(enc.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(enc.vae.config.latents_std).view(1, -1, 1, 1, 1)
    assert not torch.allclose(mean, torch.zeros_like(mean)) and not torch.allclose(std, torch.ones_like(std))
    with torch.no_grad():
        raw = enc.vae.encode(video).latent_dist.mean
        expected_pixels = enc.vae.decode(raw).sample
    torch.testing.assert_close(enc.encode_video(video), (raw - mean) / std, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(enc.decode_video((raw - mean) / std), expected_pixels, atol=1e-5, rtol=0)


def test_text_features_are_zero_past_each_caption(enc):
    captions = ["a man and a woman talk", "", "a man and a woman talk", "zebra xylophone quietly"]
    features = enc.encode_text(captions)
    assert features.shape == (4, TEXT_LEN, 24) and features.dtype == torch.float32
    lengths = enc.tokenizer(captions)["attention_mask"]
    assert [len(m) for m in lengths][:2] == [7, 1]  # six known words + </s>; "" is </s> alone
    for row, mask in zip(features, lengths, strict=True):
        assert (row[: len(mask)].abs().sum(-1) > 0).all()
        assert (row[len(mask) :] == 0).all()
    assert torch.equal(features[0], features[2])
    assert not torch.allclose(features[0], features[3])  # unseen words still differ (BPE characters)
    # padding to text_len with a mask: a caption's features do not depend on its batch
    torch.testing.assert_close(enc.encode_text(captions[:1])[0], features[0], atol=1e-6, rtol=0)
    long = enc.encode_text(["a person walks " * 20])
    assert (long[0].abs().sum(-1) > 0).all()  # truncated to text_len, no padding left


def test_vit_features_resize_any_input_to_the_tower(enc):
    assert enc.vit_feature_shape == (17, 32)  # class token + 4x4 patches, two depths of width 16
    for size in ((32, 32), (50, 40), (17, 90)):
        assert enc.encode_vit(torch.rand(3, 3, *size) * 2 - 1).shape == (3, 17, 32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(enc.encode_vit(x), enc.vit((x + 1) / 2))  # [-1, 1] -> [0, 1]
    # a flat image stays flat through the antialiased resize, whatever its size
    flat = torch.full((1, 3, 64, 48), 0.3)
    torch.testing.assert_close(enc.encode_vit(flat), enc.encode_vit(flat[:, :, :32, :32]), atol=1e-5, rtol=0)


def test_outputs_are_deterministic_across_calls_and_loads(enc, tiny_dir):
    other = _load(tiny_dir)
    video, images, captions = _video(2), _video(3)[:, :, 0], ["two people sit", ""]
    for a, b in ((enc, enc), (enc, other)):
        assert torch.equal(a.encode_video(video), b.encode_video(video))
        assert torch.equal(a.decode_video(a.encode_video(video)), b.decode_video(b.encode_video(video)))
        assert torch.equal(a.encode_text(captions), b.encode_text(captions))
        assert torch.equal(a.encode_vit(images), b.encode_vit(images))


def test_fingerprint_follows_configs_and_settings_not_locations(enc, tiny_dir, tmp_path):
    assert len(enc.fingerprint()) == 16
    assert _load(tiny_dir).fingerprint() == enc.fingerprint()
    copy = tmp_path / "moved"
    shutil.copytree(tiny_dir, copy)
    assert _load(copy).fingerprint() == enc.fingerprint()  # a moved model keeps its caches
    assert _load(tiny_dir, text_len=8).fingerprint() != enc.fingerprint()
    assert _load(tiny_dir, vit_layers=(1,)).fingerprint() != enc.fingerprint()
    assert Encoders.load(EncoderPaths.from_wan_dir(tiny_dir), text_len=TEXT_LEN).fingerprint() != enc.fingerprint()
    config_path = copy / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["latents_std"] = [2 * s for s in config["latents_std"]]
    config_path.write_text(json.dumps(config))
    assert _load(copy).fingerprint() != enc.fingerprint()


def test_missing_folders_name_the_flag_to_set(tiny_dir, tmp_path):
    good = _paths(tiny_dir)
    cases = {
        "--vae": EncoderPaths(vae=tmp_path / "nope", text_encoder=good.text_encoder, tokenizer=good.tokenizer),
        "--text-encoder": EncoderPaths(vae=good.vae, tokenizer=good.tokenizer),
        "--tokenizer": EncoderPaths(vae=good.vae, text_encoder=good.text_encoder),  # no tokenizer files there
        "--vit": EncoderPaths(vae=good.vae, text_encoder=good.text_encoder, tokenizer=good.tokenizer, vit=tmp_path),
    }
    for flag, paths in cases.items():
        with pytest.raises(FileNotFoundError, match=flag):
            Encoders.load(paths)
    with pytest.raises(FileNotFoundError, match="--wan-dir"):
        Encoders.load(cases["--vae"])
    with pytest.raises(FileNotFoundError, match="--wan-dir"):
        EncoderPaths.from_wan_dir(tmp_path / "no_wan")
    (tmp_path / "empty_vae").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        Encoders.load(EncoderPaths(vae=tmp_path / "empty_vae", text_encoder=good.text_encoder))


def test_check_model_says_what_does_not_fit(enc, tiny_dir):
    tiny = get_config("tiny")
    with pytest.raises(ValueError, match=r"in_channels=8 but the VAE .* z_dim=4"):
        enc.check_model(tiny.replace(in_channels=8, out_channels=8))
    with pytest.raises(ValueError, match=r"text_dim=32 but the text encoder .* d_model=24"):
        enc.check_model(tiny.replace(text_dim=32))
    with pytest.raises(ValueError, match="vit_dim=8 but the ViT"):
        enc.check_model(tiny.replace(vit_dim=8))
    one_level = _load(tiny_dir, vit_layers=(1,))
    with pytest.raises(ValueError, match="vit_num_levels=2 but 1 ViT layers"):
        one_level.check_model(tiny)
    one_level.check_model(tiny.replace(use_mfi=False))  # no MFI: the ViT's shape does not matter


def test_strides_come_from_the_vae_layout():
    wan21 = {"dim_mult": [1, 2, 4, 4], "temperal_downsample": [False, True, True]}
    assert vae_strides(wan21) == (4, 8)
    assert vae_strides(wan21 | {"patch_size": 2, "scale_factor_spatial": 16}) == (4, 16)
    with pytest.raises(ValueError, match="scale_factor_spatial=8 but its layout gives 16"):
        vae_strides(wan21 | {"patch_size": 2, "scale_factor_spatial": 8})


def test_wan22_ti2v_layout_has_stride_16(tiny_dir, tmp_path):
    write_tiny_vae(tmp_path / "vae", z_dim=8, wan22=True)
    paths = EncoderPaths(vae=tmp_path / "vae", text_encoder=tiny_dir / "text_encoder", tokenizer=tiny_dir / "tokenizer")
    enc = Encoders.load(paths, text_len=TEXT_LEN)
    assert (enc.temporal_stride, enc.spatial_stride, enc.z_dim, enc.vit, enc.vit_feature_shape) == (
        4,
        16,
        8,
        None,
        None,
    )
    latents = enc.encode_video(_video())
    assert latents.shape == (2, 8, 2, 2, 2)
    assert enc.decode_video(latents).shape == VIDEO
    with pytest.raises(ValueError, match=r"in_channels=4 but the VAE .* z_dim=8"):
        enc.check_model(get_config("tiny"))
    # an older config without scale_factor_*: diffusers would default the spatial factor to 8
    config_path = tmp_path / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    del config["scale_factor_spatial"], config["scale_factor_temporal"]
    config_path.write_text(json.dumps(config))
    assert Encoders.load(paths, text_len=TEXT_LEN).spatial_stride == 16


def test_captions_are_cleaned_like_wan_prompts(enc):
    clean = enc.encode_text(["a man & a woman talk"])
    torch.testing.assert_close(enc.encode_text(["  a man &amp;  a woman\n talk "]), clean, atol=0, rtol=0)
    torch.testing.assert_close(enc.encode_text([None, ""])[0], enc.encode_text([""])[0], atol=0, rtol=0)
