"""Reference tokens: per identity x view-slot VAE latents -> tokens, LPT proxy/sink tokens, layout.

Sequence layout after the video tokens (N identities, S = len(VIEW_SLOTS) slots, P tokens per view,
K sinks):

    [id 0: slot 0 (P) ... slot S-1 (P)] ... [id N-1: ...] [sink 0 ... sink K-1]

Every slot is always there: a present view contributes its patch-embedded latent, an absent one the
learnable proxy group of that slot (LPT). So the same layout, positions and masks serve any subset
of views, and a batch can mix samples with different views without padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harmoview.model.config import FRONTAL_SLOT, VIEW_SLOTS, DiTConfig
from harmoview.model.rope import identity_block_starts, reference_positions, sink_positions

# Owner ids of tokens (which attention groups they belong to).
VIDEO_OWNER = -1
SINK_OWNER = -2


@dataclass
class References:
    """Reference views of every identity of a batch.

    latents: (B, N, S, C, h, w) VAE latents of the reference crops (one latent frame each), N
        identities, S = len(VIEW_SLOTS) slots in VIEW_SLOTS order; absent slots may hold anything.
    present: (B, N, S) bool, True where the view exists.
    """

    latents: torch.Tensor
    present: torch.Tensor

    @property
    def num_identities(self) -> int:
        """N, the identities of the batch (absent ones included)."""
        return self.latents.shape[1]

    @property
    def frontal_present(self) -> torch.Tensor:
        """(B, N) bool: identities whose frontal view (the MFI source) exists."""
        return self.present[:, :, FRONTAL_SLOT]

    def validate(self, config: DiTConfig) -> None:
        """Raise a ValueError describing the first shape mismatch."""
        b, n, s, c, h, w = self.latents.shape
        if s != len(VIEW_SLOTS):
            raise ValueError(f"references need {len(VIEW_SLOTS)} view slots {VIEW_SLOTS}, got {s}")
        if (h, w) != tuple(config.ref_latent_hw):
            raise ValueError(f"reference latents are {h}x{w}, the config expects {config.ref_latent_hw}")
        if c != config.in_channels:
            raise ValueError(f"reference latents have {c} channels, the config expects {config.in_channels}")
        if not 1 <= n <= config.max_identities:
            raise ValueError(f"{n} identities; the model supports 1..{config.max_identities}")
        if self.present.shape != (b, n, s):
            raise ValueError(f"present mask {tuple(self.present.shape)} does not match latents {(b, n, s)}")


@dataclass
class ReferenceLayout:
    """Positions and attention owners of the reference part of the sequence (same for the whole batch)."""

    positions: torch.Tensor
    """(Lr, 3) int64 rotary (t, h, w) positions."""
    owners: torch.Tensor
    """(Lr,) int64: identity index for reference tokens, SINK_OWNER for sinks."""


def reference_layout(config: DiTConfig, num_identities: int, num_video_frames: int) -> ReferenceLayout:
    """Jump-RoPE positions and owners of N identities' reference tokens followed by the sinks.

    `num_video_frames` is the video's latent frame count after patching (its temporal positions are
    0..F-1). Sinks sit one gap after the last identity block.
    """
    num_slots = len(VIEW_SLOTS)
    ph, pw = config.ref_latent_hw[0] // config.patch_size[1], config.ref_latent_hw[1] // config.patch_size[2]
    ref_pos = reference_positions(num_identities, num_slots, ph, pw, num_video_frames, config.jump_rope_gap)
    last_start = identity_block_starts(num_identities, num_video_frames, num_slots, config.jump_rope_gap)[-1]
    sink_pos = sink_positions(config.num_sink_tokens, last_start + num_slots + config.jump_rope_gap)
    owners = torch.arange(num_identities).repeat_interleave(num_slots * ph * pw)
    sink_owners = torch.full((config.num_sink_tokens,), SINK_OWNER)
    return ReferenceLayout(torch.cat([ref_pos, sink_pos]), torch.cat([owners, sink_owners]))


class ReferenceTokens(nn.Module):
    """Learnable Proxy Tokens: one token group per view slot for absent views, plus always-present sinks.

    With `proxy_tokens=False` (the LPT ablation) there are no proxy groups: an absent slot is a zero latent.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        shape = (len(VIEW_SLOTS), config.tokens_per_view, config.dim)
        self.proxy_tokens = nn.Parameter(torch.randn(shape) * 0.02) if config.proxy_tokens else None
        self.sink_tokens = nn.Parameter(torch.randn(config.num_sink_tokens, config.dim) * 0.02)

    def forward(self, refs: References, patch_embedding: nn.Module) -> torch.Tensor:
        """Tokens of every slot of every identity, then the sinks. Returns (B, N*S*P + K, D)."""
        b, n, s, c, h, w = refs.latents.shape
        latents = refs.latents
        if self.proxy_tokens is None:  # zero padding: an absent view is an all-zero latent
            latents = latents * refs.present[:, :, :, None, None, None].to(latents.dtype)
        frames = latents.reshape(b * n * s, c, 1, h, w)  # each view is a one-frame video
        tokens = patch_embedding(frames).flatten(2).transpose(1, 2)  # (B*N*S, P, D)
        tokens = tokens.unflatten(0, (b, n, s))  # (B, N, S, P, D)
        if self.proxy_tokens is not None:
            present = refs.present[:, :, :, None, None]  # (B, N, S, 1, 1)
            tokens = torch.where(present, tokens, self.proxy_tokens.to(tokens.dtype))  # (B, N, S, P, D)
        sinks = self.sink_tokens.to(tokens.dtype).expand(b, -1, -1)  # (B, K, D)
        return torch.cat([tokens.flatten(1, 3), sinks], dim=1)  # (B, N*S*P + K, D)


AttentionGroup = tuple[slice, list[slice]]
"""A contiguous span of queries and the key spans it may attend to."""


@dataclass
class IsolationSpans:
    """Where the video, each identity's reference tokens and the sinks lie in the full sequence.

    The isolation rule (spelled out as a mask by `self_attention_mask`): video tokens see everything;
    identity k's reference tokens see only identity k's tokens and the sinks; sinks see only sinks. In
    image (MFI) attention identity k's tokens see the null token and identity k's ViT features only.
    """

    num_video: int
    identities: list[tuple[int, int]]
    """[start, stop) of each identity's reference tokens."""
    sinks: tuple[int, int]
    """[start, stop) of the sink tokens (the end of the sequence)."""

    def self_groups(self) -> list[AttentionGroup]:
        """(queries, keys) groups of the masked self-attention: the video sees every token, identity k its own
        tokens and the sinks, the sinks themselves."""
        sinks = slice(*self.sinks)
        groups = [(slice(0, self.num_video), [slice(0, self.sinks[1])])]
        groups += [(slice(a, b), [slice(a, b), sinks]) for a, b in self.identities]
        return groups + ([(sinks, [sinks])] if self.sinks[1] > self.sinks[0] else [])

    def image_groups(self, num_image_tokens: int) -> list[AttentionGroup]:
        """Groups over the MFI context [null, identity 0's T tokens, ..., identity N-1's]."""
        per_identity = (num_image_tokens - 1) // len(self.identities)
        null = slice(0, 1)
        groups = [(slice(0, self.num_video), [slice(0, num_image_tokens)])]
        for k, (a, b) in enumerate(self.identities):
            groups.append((slice(a, b), [null, slice(1 + k * per_identity, 1 + (k + 1) * per_identity)]))
        return groups + ([(slice(*self.sinks), [null])] if self.sinks[1] > self.sinks[0] else [])


def isolation_spans(config: DiTConfig, num_identities: int, num_video: int) -> IsolationSpans:
    """Spans of the layout [video | identity 0 | ... | identity N-1 | sinks]."""
    per_identity = len(VIEW_SLOTS) * config.tokens_per_view
    starts = [num_video + k * per_identity for k in range(num_identities)]
    end = num_video + num_identities * per_identity
    return IsolationSpans(num_video, [(s, s + per_identity) for s in starts], (end, end + config.num_sink_tokens))


def self_attention_mask(owners: torch.Tensor) -> torch.Tensor:
    """Identity-isolation rule as a bool mask (1, 1, L, L), True = may attend.

    Video tokens see everything. Identity k's reference tokens see only identity k's tokens and the
    sinks; sinks see only sinks. Reference tokens must not see the video either: the video sees all
    identities, so it would carry identity j's features into identity k's tokens in the next block.
    The model computes the same thing without a mask (`blocks.grouped_attention`); this is the spec.
    """
    q, k = owners[:, None], owners[None, :]  # (L, 1), (1, L)
    allowed = (q == VIDEO_OWNER) | (q == k) | (k == SINK_OWNER)
    return allowed[None, None]  # (1, 1, L, L)
