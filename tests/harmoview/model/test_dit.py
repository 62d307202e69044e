"""HarmoViewDiT forward: equality with diffusers' Wan, fresh == backbone, gradients, views, identities."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from harmoview import HarmoViewDiT, is_harmoview_param
from harmoview.model.weights import diffusers_config, to_layout
from tests.harmoview.model.helpers import make_references, pretrained_like, video_inputs, vit_features


def diffusers_twin(model: HarmoViewDiT) -> WanTransformer3DModel:
    """diffusers' Wan at the same config, holding our weights (converted by our own key map)."""
    cfg = {k: v for k, v in diffusers_config(model.config).items() if not k.startswith("_")}
    twin = WanTransformer3DModel(**cfg)
    backbone = {k: v for k, v in to_layout(model, "diffusers").items() if not is_harmoview_param(k)}
    twin.load_state_dict(backbone, strict=True)
    return twin.eval()


def test_backbone_matches_diffusers_wan(tiny):
    model = pretrained_like(HarmoViewDiT(tiny.backbone_only()))
    twin = diffusers_twin(model)
    video, t, text = video_inputs(tiny)
    with torch.no_grad():
        ours, theirs = model(video, t, text), twin(video, t, text).sample
    assert ours.shape == video.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_per_token_timesteps_match_diffusers_wan22(tiny):
    model = pretrained_like(HarmoViewDiT(tiny.backbone_only()))
    twin = diffusers_twin(model)
    video, _, text = video_inputs(tiny)
    t_tokens = torch.randint(0, 1000, (2, 3 * 4 * 4)).float()  # one timestep per video token
    with torch.no_grad():
        torch.testing.assert_close(model(video, t_tokens, text), twin(video, t_tokens, text).sample, atol=1e-5, rtol=0)


def test_features_off_at_runtime_match_diffusers(tiny):
    """A full HarmoView model called without references or ViT features is the plain Wan DiT."""
    model = pretrained_like(HarmoViewDiT(tiny))
    twin = diffusers_twin(model)
    video, t, text = video_inputs(tiny)
    with torch.no_grad():
        torch.testing.assert_close(model(video, t, text), twin(video, t, text).sample, atol=1e-5, rtol=0)


def test_fresh_mfi_equals_backbone(tiny):
    """Zero MFI gates: feeding ViT features to a fresh HarmoView changes nothing."""
    model = pretrained_like(HarmoViewDiT(tiny))
    video, t, text = video_inputs(tiny)
    refs = make_references(tiny, [[[True, False, True, False, False]]] * 2)
    with torch.no_grad():
        plain = model(video, t, text, refs)
        with_mfi = model(video, t, text, refs, vit_features(tiny, 2, 1))
        no_refs = model(video, t, text)
        with_mfi_no_refs = model(video, t, text, None, vit_features(tiny, 2, 1))
    torch.testing.assert_close(with_mfi, plain, atol=0, rtol=0)
    torch.testing.assert_close(with_mfi_no_refs, no_refs, atol=0, rtol=0)
    # References are in-context tokens, so they do change the prediction (no gate on them by design).
    assert (plain - no_refs).abs().max() > 1e-4


def test_gradients_reach_every_new_module_after_one_step(tiny):
    model = pretrained_like(HarmoViewDiT(tiny))
    video, t, text = video_inputs(tiny)
    present = [[[True, False, True, False, False], [False, True, False, False, True]]] * 2
    refs, feats = make_references(tiny, present), vit_features(tiny, 2, 2)
    target = torch.randn_like(video)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def grads() -> dict[str, float]:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(video, t, text, refs, feats), target).backward()
        return {n: p.grad.abs().sum().item() for n, p in model.named_parameters() if is_harmoview_param(n)}

    first = grads()
    # Before any step only the zero gates (and the in-sequence proxy/sink tokens) see a gradient:
    assert first["blocks.0.cross_attn.gate_img"] > 0 and first["references.proxy_tokens"] > 0
    assert first["blocks.0.cross_attn.k_img.weight"] == 0 and first["mfi.proj.0.weight"] == 0
    optimizer.step()
    second = grads()
    assert set(second) >= {"references.sink_tokens", "mfi.identity_embedding", "mfi.null_token"}
    dead = [n for n, g in second.items() if g == 0]
    assert not dead, f"no gradient after one step: {dead}"


@pytest.mark.parametrize("num_identities", [1, 2, 3])
@pytest.mark.parametrize(
    "slots", [[False] * 5, [True] * 5, [True, False, False, False, False], [False, True, False, True, False]]
)
def test_any_views_and_identities_one_code_path(tiny, num_identities, slots):
    model = pretrained_like(HarmoViewDiT(tiny))
    video, t, text = video_inputs(tiny)
    refs = make_references(tiny, [[slots] * num_identities] * 2)
    out = model(video, t, text, refs, vit_features(tiny, 2, num_identities))
    assert out.shape == video.shape and torch.isfinite(out).all()


def test_proxy_tokens_take_absent_slots(tiny):
    model = pretrained_like(HarmoViewDiT(tiny))
    video, t, text = video_inputs(tiny)
    slots = [True, False, True, False, False]  # left, left_profile and right_profile are absent
    refs = make_references(tiny, [[slots]] * 2)
    with torch.no_grad():
        base = model(video, t, text, refs)
        # whatever lies in an absent slot is ignored
        refs.latents[:, :, 1] = 100.0
        torch.testing.assert_close(model(video, t, text, refs), base, atol=0, rtol=0)
        # the proxy group of an absent slot is used ...
        # (a random change: a constant shift per token would vanish in the LayerNorm)
        delta = torch.randn_like(model.references.proxy_tokens[1])
        model.references.proxy_tokens[1] += delta
        changed = model(video, t, text, refs)
        assert (changed - base).abs().max() > 1e-4
        model.references.proxy_tokens[1] -= delta
        # ... and that of a present slot is not
        model.references.proxy_tokens[0] += delta
        torch.testing.assert_close(model(video, t, text, refs), base, atol=1e-6, rtol=0)


def test_lpt_off_pads_absent_slots_with_zero_latents(tiny):
    """The LPT ablation: no proxy or sink parameters, an absent slot is exactly a present all-zero latent."""
    config = tiny.replace(proxy_tokens=False, num_sink_tokens=0)
    model = pretrained_like(HarmoViewDiT(config))
    assert not any("proxy_tokens" in n for n, _ in model.named_parameters())
    assert model.references.sink_tokens.numel() == 0
    video, t, text = video_inputs(config)
    refs = make_references(config, [[[True, False, True, False, False]]] * 2)
    with torch.no_grad():
        refs.latents[:, :, 1] = 100.0  # ignored: the absent slot is zeroed
        absent = model(video, t, text, refs)
        refs.latents[:, :, 1], refs.present[:, :, 1] = 0.0, True
        torch.testing.assert_close(model(video, t, text, refs), absent, atol=0, rtol=0)
    assert absent.shape == video.shape and torch.isfinite(absent).all()


def _reference_states(model: HarmoViewDiT, *inputs) -> torch.Tensor:
    """Hidden states of the whole sequence after the last block."""
    captured = {}
    hook = model.blocks[-1].register_forward_hook(lambda m, i, out: captured.update(x=out))
    with torch.no_grad():
        model(*inputs)
    hook.remove()
    return captured["x"]


def test_isolation_mask_keeps_identity_a_independent_of_b(tiny):
    model = pretrained_like(HarmoViewDiT(tiny.replace(isolate_identities=True)))
    with torch.no_grad():
        for block in model.blocks:  # open the MFI gates so that image attention matters too
            block.cross_attn.gate_img.fill_(0.5)
    video, t, text = video_inputs(tiny)
    refs = make_references(tiny, [[[True, True, False, False, False], [True, False, True, False, False]]] * 2)
    feats = vit_features(tiny, 2, 2)
    num_video, per_identity = 48, 5 * tiny.tokens_per_view
    a = slice(num_video, num_video + per_identity)
    sinks = slice(-tiny.num_sink_tokens, None)

    before = _reference_states(model, video, t, text, refs, feats)
    refs.latents[:, 1] = torch.randn_like(refs.latents[:, 1])  # new views of identity B
    refs.present[:, 1] = torch.tensor([False, True, True, True, False])
    feats[:, 1] = torch.randn_like(feats[:, 1])
    after = _reference_states(model, video, t, text, refs, feats)

    torch.testing.assert_close(after[:, a], before[:, a], atol=1e-6, rtol=0)
    torch.testing.assert_close(after[:, sinks], before[:, sinks], atol=1e-6, rtol=0)
    assert (after[:, a.stop :] - before[:, a.stop :]).abs().max() > 1e-3  # B itself did change
    assert (after[:, :num_video] - before[:, :num_video]).abs().max() > 1e-3  # the video sees B


def test_without_isolation_identities_interact(tiny):
    """The converse, so that the isolation test above cannot pass vacuously."""
    model = pretrained_like(HarmoViewDiT(tiny))
    video, t, text = video_inputs(tiny)
    refs = make_references(tiny, [[[True] * 5, [True] * 5]] * 2)
    a = slice(48, 48 + 5 * tiny.tokens_per_view)
    before = _reference_states(model, video, t, text, refs)
    refs.latents[:, 1] = torch.randn_like(refs.latents[:, 1])
    after = _reference_states(model, video, t, text, refs)
    assert (after[:, a] - before[:, a]).abs().max() > 1e-4


def test_reference_validation_errors(tiny):
    model = HarmoViewDiT(tiny)
    video, t, text = video_inputs(tiny)
    refs = make_references(tiny, [[[True] * 5] * 4] * 2)  # 4 identities > max_identities
    with pytest.raises(ValueError, match="identities"):
        model(video, t, text, refs)
    with pytest.raises(ValueError, match="timesteps"):
        model(video, torch.zeros(2, 5), text)
    one = make_references(tiny, [[[True] * 5]] * 2)
    with pytest.raises(ValueError, match="number of identities"):
        model(video, t, text, one, vit_features(tiny, 2, 2))
    with pytest.raises(ValueError, match="use_references=False"):  # never silently ignored
        HarmoViewDiT(tiny.backbone_only())(video, t, text, one)
    with pytest.raises(ValueError, match="use_mfi=False"):
        HarmoViewDiT(tiny.backbone_only())(video, t, text, None, vit_features(tiny, 2, 1))


def test_grouped_attention_equals_masked_attention(tiny):
    from harmoview.model.blocks import attention, grouped_attention
    from harmoview.model.references import VIDEO_OWNER, isolation_spans, reference_layout, self_attention_mask

    layout = reference_layout(tiny, num_identities=3, num_video_frames=3)
    owners = torch.cat([torch.full((48,), VIDEO_OWNER), layout.owners])
    q, k, v = (torch.randn(2, owners.numel(), 2, 16) for _ in range(3))
    masked = attention(q, k, v, self_attention_mask(owners))
    groups = isolation_spans(tiny, 3, 48).self_groups()
    torch.testing.assert_close(grouped_attention(q, k, v, groups, None), masked, atol=1e-6, rtol=0)


def test_reference_tokens_run_at_timestep_zero(tiny):
    """Isolated reference tokens see neither the video nor its timestep: their states ignore both."""
    model = pretrained_like(HarmoViewDiT(tiny.replace(isolate_identities=True)))
    video, t, text = video_inputs(tiny)
    refs = make_references(tiny, [[[True, False, True, False, False]]] * 2)
    before = _reference_states(model, video, t, text, refs)
    after = _reference_states(model, torch.randn_like(video), torch.tensor([10.0, 600.0]), text, refs)
    torch.testing.assert_close(after[:, 48:], before[:, 48:], atol=1e-6, rtol=0)
    assert (after[:, :48] - before[:, :48]).abs().max() > 1e-3
