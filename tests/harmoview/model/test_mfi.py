"""MFI: the open_clip ViT feature source (tiny random tower, local checkpoint) and injection masks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from harmoview import HarmoViewDiT, load_vit
from tests.harmoview.model.helpers import make_references, pretrained_like, video_inputs

# A tiny ViT: 32 px images, 8 px patches -> 16 patch tokens + 1 class token, width 16, 2 blocks.
TINY_VIT = {"layers": 2, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 32}


def test_multi_depth_features_from_random_tower():
    vit = load_vit(TINY_VIT, layer_indices=(0, -1))
    assert vit.layer_indices == [0, 1]
    feats = vit(torch.rand(3, 3, 32, 32))
    assert feats.shape == (3, 1 + 16, 16 * 2)  # class + patch tokens, two depths side by side
    assert not any(p.requires_grad for p in vit.parameters())
    per_identity = vit.encode_identities(torch.rand(2, 3, 3, 32, 32))
    assert per_identity.shape == (2, 3, 17, 32)


def test_load_vit_from_local_open_clip_checkpoint(tmp_path):
    source = load_vit(TINY_VIT, layer_indices=(1,))
    state = {f"visual.{k}": v.contiguous() for k, v in source.visual.state_dict().items()}
    state["text.token_embedding.weight"] = torch.zeros(4, 4)  # text tower keys are ignored
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    cfg = {"model_cfg": {"embed_dim": 16, "vision_cfg": TINY_VIT}, "preprocess_cfg": {"mean": [0.5] * 3}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    loaded = load_vit(tmp_path, layer_indices=(1,))
    torch.testing.assert_close(loaded.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    x = torch.rand(2, 3, 32, 32)
    shifted = x - source.mean + loaded.mean  # (x' - 0.5) / std == (x - mean_src) / std
    torch.testing.assert_close(loaded(shifted), source(x), atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError):
        load_vit(tmp_path / "nowhere")


def test_mfi_end_to_end_and_missing_frontal_is_masked(tiny):
    vit = load_vit(TINY_VIT, layer_indices=(0, 1))  # 2 levels x width 16 = tiny's vit_dim * levels
    model = pretrained_like(HarmoViewDiT(tiny))
    with torch.no_grad():
        for block in model.blocks:
            block.cross_attn.gate_img.fill_(1.0)
    video, t, text = video_inputs(tiny)
    # identity 0 has a frontal view, identity 1 does not
    refs = make_references(tiny, [[[True, True, False, False, False], [False, True, False, False, False]]] * 2)
    feats = vit.encode_identities(torch.rand(2, 2, 3, 32, 32))  # (B, N, 17, 32)
    with torch.no_grad():
        base = model(video, t, text, refs, feats)
        assert (base - model(video, t, text, refs)).abs().max() > 1e-4  # open gates: MFI matters
        feats_b = feats.clone()
        feats_b[:, 1] = torch.randn_like(feats_b[:, 1])  # features of the identity without a frontal view
        torch.testing.assert_close(model(video, t, text, refs, feats_b), base, atol=1e-6, rtol=0)
        feats_a = feats.clone()
        feats_a[:, 0] = torch.randn_like(feats_a[:, 0])
        assert (model(video, t, text, refs, feats_a) - base).abs().max() > 1e-4
        # no frontal view anywhere: only the null token is attended, still finite
        refs.present[:, :, 0] = False
        assert torch.isfinite(model(video, t, text, refs, feats)).all()
