"""Weight layouts: parameter counts, diffusers/native loading, round trips, load reports, meta build."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from harmoview import HarmoViewDiT, build_model, from_pretrained, get_config, is_harmoview_param, save_checkpoint
from harmoview.model.weights import diffusers_config, load_weights, read_config, to_layout
from tests.harmoview.model.helpers import make_references, pretrained_like, video_inputs, vit_features


def _diffusers_kwargs(config) -> dict:
    return {k: v for k, v in diffusers_config(config).items() if not k.startswith("_")}


@pytest.mark.parametrize("preset", ["tiny", "wan2.1-t2v-1.3b", "wan2.2-ti2v-5b", "wan-14b"])
def test_parameter_counts_match_diffusers(preset):
    config = get_config(preset)
    with torch.device("meta"):
        ours = HarmoViewDiT(config)
        theirs = WanTransformer3DModel(**_diffusers_kwargs(config))
    assert ours.num_parameters(backbone_only=True) == sum(p.numel() for p in theirs.parameters())
    if preset == "wan2.1-t2v-1.3b":
        assert ours.num_parameters(backbone_only=True) == 1_418_996_800


def _all_inputs(config):
    video, t, text = video_inputs(config)
    refs = make_references(config, [[[True, False, True, False, False], [False, False, False, False, True]]] * 2)
    return video, t, text, refs, vit_features(config, 2, 2)


def _trained_harmoview(config) -> HarmoViewDiT:
    """A HarmoView model whose every parameter (gates included) is away from its init."""
    model = HarmoViewDiT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_round_trip_through_diffusers_layout(tiny, tmp_path):
    model = _trained_harmoview(tiny.replace(isolate_identities=True))
    save_checkpoint(model, tmp_path, layout="diffusers")
    loaded, report = from_pretrained(tmp_path)
    assert report.ok and report.layout == "diffusers" and not report.new
    assert loaded.config == model.config
    inputs = _all_inputs(tiny)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), model(*inputs), atol=0, rtol=0)


def test_loads_a_diffusers_checkpoint_written_by_diffusers(tiny, tmp_path):
    theirs = WanTransformer3DModel(**_diffusers_kwargs(tiny))
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    theirs.save_pretrained(tmp_path)
    ours, report = from_pretrained(tmp_path)  # config read from diffusers' config.json
    assert report.ok and report.layout == "diffusers"
    assert sorted(report.new) == sorted(n for n, _ in ours.named_parameters() if is_harmoview_param(n))
    video, t, text = video_inputs(tiny)
    with torch.no_grad():
        torch.testing.assert_close(ours(video, t, text), theirs(video, t, text).sample, atol=1e-5, rtol=0)


def test_native_layout_state_dict_loads_and_lists_new_modules(tiny):
    source = pretrained_like(HarmoViewDiT(tiny.backbone_only()))
    native = to_layout(source, "native")
    assert "blocks.0.self_attn.q.weight" in native and "blocks.0.norm3.weight" in native
    model, report = build_model(tiny, {f"model.diffusion_model.{k}": v for k, v in native.items()})
    assert report.ok and report.layout == "native" and len(report.loaded) == len(native)
    expected_new = {n for n, _ in model.named_parameters() if is_harmoview_param(n)}
    assert set(report.new) == expected_new and "references.proxy_tokens" in expected_new
    assert not any(p.is_meta for p in model.parameters())
    assert all(b.cross_attn.gate_img.eq(0).all() for b in model.blocks)
    video, t, text = video_inputs(tiny)
    with torch.no_grad():
        torch.testing.assert_close(model(video, t, text), source(video, t, text), atol=0, rtol=0)
        # fresh HarmoView modules on loaded weights: MFI changes nothing yet
        refs, feats = _all_inputs(tiny)[3:]
        torch.testing.assert_close(model(video, t, text, refs, feats), model(video, t, text, refs), atol=0, rtol=0)


def test_unknown_and_missing_keys_are_reported_not_dropped(tiny):
    state = to_layout(HarmoViewDiT(tiny.backbone_only()), "diffusers")
    del state["blocks.1.attn2.to_k.weight"]
    state["blocks.0.attn1.mystery.weight"] = torch.zeros(3)
    state["blocks.0.ffn.net.2.bias"] = torch.zeros(5)  # wrong shape
    with pytest.raises(ValueError, match=r"(?s)missing.*cross_attn\.k\.weight.*unexpected.*mystery"):
        build_model(tiny, dict(state))
    model, report = build_model(tiny, dict(state), strict=False)
    assert report.missing == ["blocks.0.ffn.2.bias", "blocks.1.cross_attn.k.weight"]
    assert report.unexpected == ["blocks.0.attn1.mystery.weight"]
    assert report.mismatched and report.mismatched[0].startswith("blocks.0.ffn.net.2.bias")
    assert "missing (2)" in report.summary()
    # what was missing is materialised and initialised, not left on meta
    assert not model.blocks[1].cross_attn.k.weight.is_meta
    assert torch.isfinite(model.blocks[1].cross_attn.k.weight).all()


def test_load_into_existing_model_keeps_parameter_objects(tiny):
    model = HarmoViewDiT(tiny)
    source = pretrained_like(HarmoViewDiT(tiny.backbone_only()))
    weight = model.blocks[0].ffn[0].weight
    report = load_weights(model, to_layout(source, "diffusers"))
    assert report.ok and model.blocks[0].ffn[0].weight is weight
    torch.testing.assert_close(weight, source.blocks[0].ffn[0].weight)


def test_native_names_agree_with_diffusers_own_wan_converter(tiny):
    """diffusers converts real Wan checkpoints with its own rename table; ours must agree with it."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    model = HarmoViewDiT(tiny.backbone_only())
    theirs = convert_wan_transformer_to_diffusers(dict(to_layout(model, "native")))
    ours = to_layout(model, "diffusers")
    assert sorted(theirs) == sorted(ours)
    assert all(theirs[k] is ours[k] or torch.equal(theirs[k], ours[k]) for k in ours)


def test_from_pretrained_reads_a_native_wan_directory(tiny, tmp_path):
    """A Wan2.1-style directory: config.json with Wan's field names and native-layout safetensors."""
    import json

    from safetensors.torch import save_file

    source = pretrained_like(HarmoViewDiT(tiny.backbone_only()))
    save_file(to_layout(source, "native"), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    wan_cfg = {"_class_name": "WanModel", "model_type": "t2v", "dim": 32, "ffn_dim": 64, "freq_dim": 16,
               "in_dim": 4, "out_dim": 4, "num_heads": 2, "num_layers": 2, "eps": 1e-6, "text_len": 512}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(wan_cfg))
    config = read_config(tmp_path)
    assert (config.dim, config.num_heads, config.in_channels, config.text_dim) == (32, 2, 4, 4096)
    # Wan's config.json has no text width (always 4096 there); the tiny model's is 24
    model, report = build_model(config.replace(text_dim=24), tmp_path)
    assert report.ok and report.layout == "native"
    video, t, text = video_inputs(tiny)
    with torch.no_grad():
        torch.testing.assert_close(model(video, t, text), source(video, t, text), atol=0, rtol=0)
