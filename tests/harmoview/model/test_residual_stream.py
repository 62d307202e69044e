"""The fp32 residual stream (`DiTConfig.fp32_residual`, Wan's reference code) vs the bf16 one (diffusers')."""

from __future__ import annotations

import pytest
import torch

from harmoview import HarmoViewDiT
from tests.harmoview.model.helpers import make_references, pretrained_like, video_inputs, vit_features
from tests.harmoview.model.test_dit import diffusers_twin


def stream_dtypes(model: HarmoViewDiT, *inputs) -> tuple[set[torch.dtype], torch.Tensor]:
    """dtypes of the hidden state entering and leaving every block, and the model's output."""
    seen: set[torch.dtype] = set()
    hooks = [
        b.register_forward_hook(lambda _m, args, out: seen.update({args[0].dtype, out.dtype})) for b in model.blocks
    ]
    try:
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen, out


def test_float32_model_is_the_same_either_way(tiny):
    """In float32 the switch changes nothing: both equal diffusers' Wan (test_dit), bit for bit each other."""
    model = pretrained_like(HarmoViewDiT(tiny))
    video, t, text = video_inputs(tiny)
    refs, vit = make_references(tiny, [[[True, False, True, False, False]]] * 2), vit_features(tiny, 2, 1)
    with torch.no_grad():
        on = model(video, t, text, refs, vit)
        model.config.fp32_residual = False
        off = model(video, t, text, refs, vit)
    torch.testing.assert_close(on, off, atol=0, rtol=0)


@pytest.mark.parametrize("fp32_residual", [True, False])
def test_bf16_weights_keep_a_float32_stream_only_when_asked(tiny, fp32_residual):
    model = pretrained_like(HarmoViewDiT(tiny.replace(fp32_residual=fp32_residual))).to(torch.bfloat16)
    video, t, text = video_inputs(tiny)
    refs = make_references(tiny, [[[True, True, False, False, False]]] * 2)
    refs.latents = refs.latents.bfloat16()
    seen, out = stream_dtypes(model, video.bfloat16(), t, text.bfloat16(), refs, vit_features(tiny, 2, 1).bfloat16())
    assert seen == ({torch.float32} if fp32_residual else {torch.bfloat16})
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()  # the head's matmul runs in bf16


@pytest.mark.parametrize("fp32_residual", [True, False])
def test_autocast_on_float32_weights(tiny, fp32_residual):
    """The trainer's bf16 mode: fp32 master weights under bf16 autocast; the matmuls run in bf16 either way."""
    model = pretrained_like(HarmoViewDiT(tiny.replace(fp32_residual=fp32_residual)))
    video, t, text = video_inputs(tiny)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seen, out = stream_dtypes(model, video, t, text)
    assert seen == ({torch.float32} if fp32_residual else {torch.bfloat16})
    assert out.dtype == torch.bfloat16


def test_bf16_stream_is_diffusers_computation(tiny):
    """Switched off, a bf16 model computes what diffusers' Wan computes in bf16 (as before the switch existed):
    the same to a few bf16 roundings, against a float32 reference two orders of magnitude larger."""
    model = pretrained_like(HarmoViewDiT(tiny.backbone_only().replace(fp32_residual=False)))
    twin = diffusers_twin(model)
    video, t, text = video_inputs(tiny)
    with torch.no_grad():
        reference = model(video, t, text)
        ours = model.to(torch.bfloat16)(video.bfloat16(), t, text.bfloat16()).float()
        theirs = twin.to(torch.bfloat16)(video.bfloat16(), t, text.bfloat16()).sample.float()
    scale = reference.abs().max()
    assert (ours - theirs).abs().max() / scale < 0.02
