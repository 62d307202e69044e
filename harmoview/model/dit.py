"""HarmoViewDiT: a Wan2.x text-to-video DiT with reference tokens (LPT, Jump-RoPE) and MFI.

The model sees latents, timesteps and conditions only; noise schedules and losses live elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from harmoview.model.blocks import DiTBlock, Head, TimeSegments
from harmoview.model.config import DiTConfig
from harmoview.model.mfi import MFIProjector
from harmoview.model.references import (
    References,
    ReferenceTokens,
    isolation_spans,
    reference_layout,
)
from harmoview.model.rope import grid_positions, rope_angles

# Parameter name fragments of the HarmoView modules (everything else is the Wan backbone).
HARMOVIEW_PARAM_MARKERS = ("references.", "mfi.", ".k_img.", ".v_img.", ".norm_k_img.", ".gate_img")


def is_harmoview_param(name: str) -> bool:
    """True for parameters that Wan checkpoints do not have (they are initialised, not loaded)."""
    return any(marker in name for marker in HARMOVIEW_PARAM_MARKERS)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of timesteps t (...,) -> (..., dim) float32, computed in float64."""
    half = dim // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[..., None] * freqs  # (..., half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float()


@torch.no_grad()
def init_parameter_(name: str, p: torch.Tensor, dim: int, *, zero_head: bool = True) -> None:
    """Initialise parameter `name` in place, by Wan's scheme: Xavier-uniform linear/conv weights, N(0, 0.02)
    embeddings, zero biases, a zero head. HarmoView's image gates start at zero so that a fresh model equals its
    backbone. Also used on the full tensor of a sharded parameter, which every rank then slices."""
    zero = name.endswith("gate_img") or name.endswith(".bias") or (zero_head and name == "head.head.weight")
    if zero:
        nn.init.zeros_(p)
    elif name.endswith("modulation"):
        nn.init.normal_(p, std=dim**-0.5)
    elif p.ndim == 1:  # norm scales
        nn.init.ones_(p)
    elif name.startswith(("text_embedding.", "time_embedding.", "references.", "mfi.identity", "mfi.null")):
        nn.init.normal_(p, std=0.02)
    elif p.numel():
        nn.init.xavier_uniform_(p.view(p.shape[0], -1))


class HarmoViewDiT(nn.Module):
    """Wan2.x DiT; with `use_references`/`use_mfi` it also takes multi-view references of 1..3 people.

    State-dict names follow Wan's native checkpoints; `harmoview.model.weights` converts the diffusers layout.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embedding = nn.Conv3d(c.in_channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList([DiTBlock(c) for _ in range(c.num_layers)])
        self.head = Head(c)
        self.references = ReferenceTokens(c) if c.use_references else None
        self.mfi = MFIProjector(c) if c.use_mfi else None
        self.initialize_weights()

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize_weights(self, names: Iterable[str] | None = None, *, zero_head: bool = True) -> None:
        """(Re)initialise all parameters, or only `names` (used after loading a checkpoint on meta).

        Wan's scheme (`init_parameter_`). `zero_head=False` gives the head Xavier weights like every other
        linear: random weights that stand in for a pretrained backbone (a zero head passes no gradient to
        anything when it is frozen).
        """
        wanted = None if names is None else set(names)
        for name, p in self.named_parameters():
            if wanted is None or name in wanted:
                init_parameter_(name, p, self.config.dim, zero_head=zero_head)

    # ----------------------------------------------------------------------------------------------
    def forward(
        self,
        video: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        references: References | None = None,
        vit_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow-matching velocity of the video latents.

        video: (B, C, F, H, W) noisy latents; F, H, W divisible by the patch size.
        timesteps: (B,) one timestep per sample, or (B, F'*H'*W') per video token (Wan2.2), in [0, 1000].
        text: (B, Lt, text_dim) text-encoder features (Wan pads to 512 tokens with zeros).
        references: per identity x view-slot latents and presence mask (see `References`); their
            tokens run at timestep 0 and are dropped from the output. None = plain text-to-video.
        vit_features: (B, N, T, vit_dim * vit_num_levels) ViT features of each identity's frontal
            reference (`ViTFeatures.encode_identities`); identities without a frontal view are masked.
        Returns (B, out_channels, F, H, W).
        """
        c = self.config
        self._check_conditions(references, vit_features)
        b, _, f, h, w = video.shape
        pf, ph, pw = f // c.patch_size[0], h // c.patch_size[1], w // c.patch_size[2]

        # 1. Patchify the video and lay out rotary positions.
        x = self.patch_embedding(video).flatten(2).transpose(1, 2)  # (B, Lv, D)
        num_video = x.shape[1]
        positions = grid_positions(pf, ph, pw)  # (Lv, 3)

        # 2. Append reference tokens (LPT fills absent slots) with Jump-RoPE positions.
        use_refs = references is not None
        if use_refs:
            layout = reference_layout(c, references.num_identities, pf)
            x = torch.cat([x, self.references(references, self.patch_embedding)], dim=1)  # (B, L, D)
            positions = torch.cat([positions, layout.positions])  # (L, 3)
        rope = rope_angles(positions, c.head_dim, c.rope_theta, device=x.device)  # (L, d/2) complex

        # 3. Time embedding; reference and sink tokens run at t = 0 (clean).
        t_video = self._video_timesteps(timesteps, b, num_video)  # (B, 1 or Lv)
        video_emb, video_mod = self._time_modulation(t_video)  # (B, 1|Lv, D), (B, 1|Lv, 6, D)
        time_mod = TimeSegments([video_mod], [num_video])
        if use_refs:
            _, ref_mod = self._time_modulation(t_video.new_zeros(1, 1))  # (1, 1, 6, D)
            time_mod = TimeSegments([video_mod, ref_mod], [num_video, x.shape[1] - num_video])

        # 4. Conditions: text tokens, MFI image tokens, masks.
        context = self.text_embedding(text)  # (B, Lt, D)
        image_context, image_mask = self._image_context(vit_features, references)
        isolation = None
        if use_refs and c.isolate_identities:
            isolation = isolation_spans(c, references.num_identities, num_video)

        # 5. Transformer blocks; each keeps the dtype of the stream it is given (fp32 with `fp32_residual`).
        if c.fp32_residual:
            x = x.float()
        for block in self.blocks:
            x = block(x, time_mod, context, rope, isolation, image_context, image_mask)  # (B, L, D)

        # 6. Head on the video tokens only, then unpatchify.
        x = self.head(x[:, :num_video], video_emb)  # (B, Lv, p*C)
        return self._unpatchify(x, pf, ph, pw)  # (B, C_out, F, H, W)

    # ----------------------------------------------------------------------------------------------
    def _check_conditions(self, references: References | None, vit_features: torch.Tensor | None) -> None:
        """Refuse conditions the model has no modules for, rather than ignoring them."""
        if references is not None:
            if self.references is None:
                raise ValueError("references given, but the model was built with use_references=False")
            references.validate(self.config)
        if vit_features is not None:
            if self.mfi is None:
                raise ValueError("vit_features given, but the model was built with use_mfi=False")
            expected = self.config.vit_dim * self.config.vit_num_levels
            if vit_features.ndim != 4 or vit_features.shape[-1] != expected:
                raise ValueError(f"vit_features {tuple(vit_features.shape)}: need (B, N, T, {expected})")
            if references is not None and vit_features.shape[1] != references.num_identities:
                raise ValueError("vit_features and references disagree on the number of identities")

    def _video_timesteps(self, timesteps: torch.Tensor, b: int, num_video: int) -> torch.Tensor:
        """(B,) or (B, Lv) timesteps -> (B, 1) when shared by every video token, else (B, Lv)."""
        t = timesteps.reshape(b, -1) if timesteps.ndim == 2 else timesteps.reshape(b, 1)  # (B, 1 or Lv)
        if t.shape[1] not in (1, num_video):
            raise ValueError(f"timesteps {tuple(timesteps.shape)}: need (B,) or (B, {num_video})")
        return t

    def _time_modulation(self, t_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Time embedding (B, T, D) and its 6-vector projection (B, T, 6, D), both float32.

        Per-token timesteps (Wan2.2) take few distinct values, so the MLPs run on the distinct values
        only and the results are gathered: O(#values) instead of O(L) matmuls.
        """
        values, inverse = torch.unique(t_tokens, return_inverse=True)  # (U,), (B, T)
        freq = timestep_embedding(values, self.config.freq_dim)  # (U, freq_dim)
        weight_dtype = self.time_embedding[0].weight.dtype
        emb = self.time_embedding(freq.to(weight_dtype)).float()  # (U, D)
        mod = self.time_projection(emb.to(weight_dtype)).float().unflatten(-1, (6, -1))  # (U, 6, D)
        return emb[inverse], mod[inverse]  # (B, T, D), (B, T, 6, D)

    def _image_context(
        self, vit_features: torch.Tensor | None, references: References | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """MFI tokens (B, 1 + N*T, D) and their key mask (B, 1, 1, 1 + N*T) or None; (None, None) without MFI.

        Identities without a frontal view contribute no features; the null token is always visible. The
        mask is left out when nothing is hidden so that SDPA keeps its fused maskless kernels.
        """
        if vit_features is None:
            return None, None
        b, _, t, _ = vit_features.shape
        image_context = self.mfi(vit_features)  # (B, 1 + N*T, D)
        if references is None:
            return image_context, None
        present = references.frontal_present.to(vit_features.device)  # (B, N)
        if bool(present.all()):
            return image_context, None
        key_ok = torch.cat([present.new_ones(b, 1), present.repeat_interleave(t, dim=1)], dim=1)  # (B, Li)
        return image_context, key_ok[:, None, None, :]  # (B, 1, 1, Li)

    def _unpatchify(self, x: torch.Tensor, pf: int, ph: int, pw: int) -> torch.Tensor:
        """(B, F'*H'*W', pt*ph*pw*C) -> (B, C, F'*pt, H'*ph, W'*pw)."""
        pt, qh, qw = self.config.patch_size
        x = x.reshape(x.shape[0], pf, ph, pw, pt, qh, qw, -1)  # (B, F', H', W', pt, ph, pw, C)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, F', pt, H', ph, W', pw)
        return x.reshape(x.shape[0], x.shape[1], pf * pt, ph * qh, pw * qw)

    # ----------------------------------------------------------------------------------------------
    def num_parameters(self, backbone_only: bool = False) -> int:
        """Parameter count, optionally excluding the HarmoView modules."""
        params = self.named_parameters()
        return sum(p.numel() for n, p in params if not (backbone_only and is_harmoview_param(n)))
