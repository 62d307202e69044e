"""Model configuration: the Wan2.x backbone sizes and the HarmoView additions, plus a preset registry."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field

# Reference view slots, in layout order. Every identity always occupies all slots (absent ones are
# filled by learnable proxy tokens), so one token layout serves any subset of views.
VIEW_SLOTS: tuple[str, ...] = ("frontal", "left", "right", "left_profile", "right_profile")
FRONTAL_SLOT = 0


@dataclass(kw_only=True, slots=True)
class DiTConfig:
    """Sizes of a Wan2.x text-to-video DiT and the switches of the HarmoView modules."""

    # --- Wan2.x backbone -------------------------------------------------------------------------
    dim: int = 1536
    """Hidden width of the transformer."""
    ffn_dim: int = 8960
    """Inner width of the feed-forward network."""
    num_heads: int = 12
    """Attention heads; head dim = dim / num_heads."""
    num_layers: int = 30
    """Number of transformer blocks."""
    in_channels: int = 16
    """VAE latent channels in (16 for Wan2.1 VAE, 48 for the Wan2.2 VAE of TI2V-5B)."""
    out_channels: int = 16
    """Latent channels predicted by the head."""
    text_dim: int = 4096
    """Width of the text-encoder features (umT5-XXL)."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch size (t, h, w) of the patch embedding."""
    eps: float = 1e-6
    """Epsilon of every LayerNorm and RMSNorm."""
    cross_attn_norm: bool = True
    """LayerNorm (with affine) before the text cross-attention."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies."""
    fp32_residual: bool = True
    """Keep the hidden state between and across blocks (the residual stream) in float32 while the matmuls run in
    the parameters' / autocast dtype, as Wan's reference code does (`x = x + y * e` under fp32 autocast): 30-40
    bf16 additions of small block outputs would round most of them away. False keeps the stream in the compute
    dtype like diffusers' WanTransformer3DModel (bit-comparable with it in bf16). Identical in float32."""

    # --- HarmoView ---------------------------------------------------------------------------------
    use_references: bool = True
    """Build the reference-token path (LPT proxy and sink tokens, Jump-RoPE)."""
    use_mfi: bool = True
    """Build Multi-level Feature Injection (decoupled image cross-attention in every block)."""
    ref_latent_hw: tuple[int, int] = (32, 32)
    """Latent (h, w) of one reference crop; fixes the tokens per view slot and so the proxy group size."""
    proxy_tokens: bool = True
    """LPT: one learnable token group per view slot fills every absent slot. False (an ablation) fills an absent
    slot with the patch embedding of an all-zero latent, the plain zero padding, which the model cannot learn to
    set apart; pair it with num_sink_tokens=0 to switch all of LPT off."""
    num_sink_tokens: int = 4
    """Always-present learnable sink tokens that absorb unmappable reference features (0 = none)."""
    max_identities: int = 3
    """Largest number of identities per sample (size of the MFI identity embedding)."""
    jump_rope_gap: int = 16
    """Empty temporal rotary positions between the reference blocks of consecutive identities."""
    isolate_identities: bool = False
    """Attention mask that stops identity k's reference tokens from seeing identity j's (and the video)."""
    vit_dim: int = 1280
    """Width of one ViT depth's features (open_clip ViT-H/14: 1280)."""
    vit_num_levels: int = 2
    """Number of ViT depths whose features are concatenated channel-wise for MFI."""

    # Derived ------------------------------------------------------------------------------------
    head_dim: int = field(init=False)
    """dim // num_heads (derived)."""

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        self.head_dim = self.dim // self.num_heads
        if self.head_dim % 2:
            raise ValueError("head dim must be even for rotary embeddings")
        self.patch_size = tuple(self.patch_size)
        self.ref_latent_hw = tuple(self.ref_latent_hw)

    @property
    def tokens_per_view(self) -> int:
        """Tokens of one reference view after the (spatial) patch embedding."""
        return (self.ref_latent_hw[0] // self.patch_size[1]) * (self.ref_latent_hw[1] // self.patch_size[2])

    @property
    def any_harmoview(self) -> bool:
        """True when any HarmoView module is built."""
        return self.use_references or self.use_mfi

    def backbone_only(self) -> DiTConfig:
        """The same sizes with every HarmoView module switched off (a plain Wan DiT)."""
        return dataclasses.replace(self, use_references=False, use_mfi=False)

    def replace(self, **changes: object) -> DiTConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-friendly dict of the init fields."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, data: dict) -> DiTConfig:
        """Inverse of `to_dict`; unknown keys are an error, not silently ignored."""
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown DiTConfig fields: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        """The config as indented JSON (harmoview.json of a checkpoint)."""
        return json.dumps(self.to_dict(), indent=2)


# --- presets: functions returning a fresh config (configs are mutable dataclasses) -------------------


def tiny() -> DiTConfig:
    """Two blocks, two heads: CPU tests."""
    return DiTConfig(
        dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_channels=4, out_channels=4, text_dim=24,
        freq_dim=16, ref_latent_hw=(4, 4), num_sink_tokens=2, jump_rope_gap=4, vit_dim=16, vit_num_levels=2,
    )  # fmt: skip


def wan21_t2v_1_3b() -> DiTConfig:
    """Wan2.1 T2V-1.3B."""
    return DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)


def wan22_ti2v_5b() -> DiTConfig:
    """Wan2.2 TI2V-5B (48-channel Wan2.2 VAE, stride 4x16x16)."""
    return DiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_channels=48, out_channels=48)


def wan_14b() -> DiTConfig:
    """Wan2.1 T2V-14B and each expert of Wan2.2 T2V-A14B."""
    return DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)


PRESETS: dict[str, Callable[[], DiTConfig]] = {
    "tiny": tiny,
    "wan2.1-t2v-1.3b": wan21_t2v_1_3b,
    "wan2.2-ti2v-5b": wan22_ti2v_5b,
    "wan-14b": wan_14b,
}


def get_config(name: str, **overrides: object) -> DiTConfig:
    """A fresh config of preset `name`, with `overrides` applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]().replace(**overrides) if overrides else PRESETS[name]()
