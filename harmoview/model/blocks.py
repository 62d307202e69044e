"""Attention layers and the DiT block (Wan2.x layout; module names follow Wan's native checkpoints)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harmoview.model.config import DiTConfig
from harmoview.model.references import AttentionGroup, IsolationSpans
from harmoview.model.rope import rope_apply


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (bf16 statistics drift over 30+ blocks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention on (B, L, H, d) tensors; `mask` is a bool (.., Lq, Lk), True = may attend.

    Returns (B, Lq, H*d).
    """
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)  # (B, Lq, H*d)


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: list[AttentionGroup], key_mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention where each contiguous query span sees only its key spans (identity isolation).

    Equal to one call with a block mask, but an (L, L) mask would cost L^2 memory (1.2 GB at 35k
    tokens) and push SDPA off its fused kernels; here every group is an ordinary attention call.
    q (B, Lq, H, d), k/v (B, Lk, H, d), key_mask bool (B, 1, 1, Lk) or None -> (B, Lq, H*d).
    """
    outs = []
    for q_span, k_spans in groups:
        kk = torch.cat([k[:, span] for span in k_spans], dim=1)  # (B, Lg, H, d)
        vv = torch.cat([v[:, span] for span in k_spans], dim=1)  # (B, Lg, H, d)
        mask = None if key_mask is None else torch.cat([key_mask[..., span] for span in k_spans], dim=-1)
        outs.append(attention(q[:, q_span], kk, vv, mask))
    return torch.cat(outs, dim=1)  # (B, Lq, H*d)


class _Projections(nn.Module):
    """q/k/v/o projections with qk RMSNorm across heads (Wan), shared by both attention kinds."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)


class SelfAttention(_Projections):
    """Self-attention with qk RMSNorm and 3D rotary positions."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor, groups: list[AttentionGroup] | None = None) -> torch.Tensor:
        """x (B, L, D), rope (L, d/2) complex rotations; `groups` isolate identities. -> (B, L, D)."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))  # (B, L, H, d)
        k = self.norm_k(self.k(x)).unflatten(-1, (self.num_heads, -1))  # (B, L, H, d)
        v = self.v(x).unflatten(-1, (self.num_heads, -1))  # (B, L, H, d)
        q, k = rope_apply(q, rope), rope_apply(k, rope)
        out = attention(q, k, v, None) if groups is None else grouped_attention(q, k, v, groups, None)
        return self.o(out)  # (B, L, D)


class CrossAttention(_Projections):
    """Cross-attention to text, plus (with MFI) a decoupled image cross-attention sharing the query.

    The image branch mirrors Wan's I2V layout (k_img, v_img, norm_k_img) and adds `gate_img`, a
    per-channel gate initialised at zero so that a fresh HarmoView computes exactly its backbone.
    """

    def __init__(self, dim: int, num_heads: int, eps: float, with_image: bool) -> None:
        super().__init__(dim, num_heads, eps)
        self.with_image = with_image
        if with_image:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = nn.RMSNorm(dim, eps=eps)
            self.gate_img = nn.Parameter(torch.zeros(dim))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        image_context: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        image_groups: list[AttentionGroup] | None = None,
    ) -> torch.Tensor:
        """x (B, L, D), context (B, Lt, D), image_context (B, Li, D), image_mask bool (B, 1, 1, Li) hides
        identities without a frontal view; `image_groups` isolate identities."""
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)  # (B, L, H, d)
        k = self.norm_k(self.k(context)).unflatten(-1, heads)  # (B, Lt, H, d)
        v = self.v(context).unflatten(-1, heads)  # (B, Lt, H, d)
        out = attention(q, k, v, None)  # (B, L, D); Wan pads text with zeros and uses no text mask
        if self.with_image and image_context is not None:
            k_img = self.norm_k_img(self.k_img(image_context)).unflatten(-1, heads)  # (B, Li, H, d)
            # gate * (attn @ v) == attn @ (gate * v): gating the Li values is cheaper than the L outputs
            v_img = (self.v_img(image_context) * self.gate_img).unflatten(-1, heads)  # (B, Li, H, d)
            if image_groups is None:
                out = out + attention(q, k_img, v_img, image_mask)  # (B, L, D)
            else:
                out = out + grouped_attention(q, k_img, v_img, image_groups, image_mask)  # (B, L, D)
        return self.o(out)  # (B, L, D)


@dataclass
class TimeSegments:
    """Timestep conditioning of consecutive sequence segments (video tokens, then reference tokens).

    `values[i]` is (B, 1, ...) when shared by the segment's tokens or (B, lengths[i], ...) per token.
    References always run at t = 0, so instead of one per-token (B, L, 6, D) tensor (Wan2.2 style) we
    keep one broadcast vector per segment: per-token modulation made a step ~10% slower on CPU.
    """

    values: list[torch.Tensor]
    lengths: list[int]

    def apply(self, x: torch.Tensor, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
        """fn(part, segment index) on each segment of x (B, L, ...), concatenated back."""
        if len(self.lengths) == 1:
            return fn(x, 0)
        return torch.cat([fn(part, i) for i, part in enumerate(x.split(self.lengths, dim=1))], dim=1)


def compute_dtype(x: torch.Tensor, param: torch.Tensor) -> torch.dtype:
    """The dtype sub-layers get their input in: the stream's, unless the stream is float32 and the parameters
    are lower (a bf16 model with the fp32 residual stream). Under autocast on fp32 weights this is float32 and
    autocast lowers each matmul itself; a bf16 stream (diffusers' way) is passed on unchanged."""
    return param.dtype if x.dtype == torch.float32 else x.dtype


class DiTBlock(nn.Module):
    """One Wan block: adaLN-modulated self-attention, text (+ image) cross-attention, GELU(tanh) FFN.

    Native Wan names the cross-attention norm `norm3` and the FFN norm `norm2`; we keep those names so
    native checkpoints load without renaming.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, config.num_heads, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, config.num_heads, eps, with_image=config.use_mfi)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, dim)
        )
        # Six per-block offsets added to the shared time projection: shift/scale/gate for attn and FFN.
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        time_mod: TimeSegments,
        context: torch.Tensor,
        rope: torch.Tensor,
        isolation: IsolationSpans | None = None,
        image_context: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, D); time_mod: per segment (B, 1 or n, 6, D) float32; context (B, Lt, D). -> (B, L, D).

        `isolation` (identity isolation on) splits self- and image attention into per-identity groups. The
        output has x's dtype: a float32 stream (`DiTConfig.fp32_residual`) stays float32 while the sub-layers get
        their input in the parameters' dtype (bf16 weights, or autocast's bf16 on fp32 weights).
        """
        cdtype = compute_dtype(x, self.modulation)
        self_groups = image_groups = None
        if isolation is not None:
            self_groups = isolation.self_groups()
            if image_context is not None:
                image_groups = isolation.image_groups(image_context.shape[1])
        mods = [self.modulation.float() + m for m in time_mod.values]  # (B, 1 or n, 6, D) each
        seg = time_mod.apply
        # vector order (Wan): 0 shift, 1 scale, 2 gate (attention); 3 shift, 4 scale, 5 gate (FFN)
        h = seg(self.norm1(x).float(), lambda p, i: p * (1 + mods[i][:, :, 1]) + mods[i][:, :, 0])  # (B, L, D)
        y = self.self_attn(h.to(cdtype), rope, self_groups).float()  # (B, L, D)
        x = (x.float() + seg(y, lambda p, i: p * mods[i][:, :, 2])).type_as(x)

        x = x + self.cross_attn(self.norm3(x).to(cdtype), context, image_context, image_mask, image_groups)  # no gate

        h = seg(self.norm2(x).float(), lambda p, i: p * (1 + mods[i][:, :, 4]) + mods[i][:, :, 3])  # (B, L, D)
        y = self.ffn(h.to(cdtype)).float()  # (B, L, D)
        return (x.float() + seg(y, lambda p, i: p * mods[i][:, :, 5])).type_as(x)  # (B, L, D)


class Head(nn.Module):
    """Final adaLN (2 vectors from the time embedding) and linear projection to patch pixels."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        dim = config.dim
        out_dim = config.out_channels * config.patch_size[0] * config.patch_size[1] * config.patch_size[2]
        self.norm = FP32LayerNorm(dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), time_emb (B, 1 or L, D) float32. Returns (B, L, out_channels * prod(patch))."""
        shift, scale = (self.modulation.float()[None] + time_emb[:, :, None]).unbind(2)  # (B, 1 or L, D)
        return self.head((self.norm(x).float() * (1 + scale) + shift).to(compute_dtype(x, self.modulation)))
