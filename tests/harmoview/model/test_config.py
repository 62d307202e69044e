"""Config presets and serialisation."""

from __future__ import annotations

import pytest

from harmoview import PRESETS, DiTConfig, get_config


def test_presets_hold_wan_sizes():
    sizes = {name: (c.dim, c.ffn_dim, c.num_heads, c.num_layers, c.in_channels) for name in PRESETS
             if (c := get_config(name))}  # fmt: skip
    assert sizes["wan2.1-t2v-1.3b"] == (1536, 8960, 12, 30, 16)
    assert sizes["wan2.2-ti2v-5b"] == (3072, 14336, 24, 30, 48)
    assert sizes["wan-14b"] == (5120, 13824, 40, 40, 16)
    assert get_config("wan-14b").head_dim == 128


def test_config_dict_round_trip_and_unknown_fields():
    config = get_config("tiny", jump_rope_gap=0, isolate_identities=True)
    assert DiTConfig.from_dict(config.to_dict()) == config
    assert not config.backbone_only().any_harmoview
    with pytest.raises(ValueError, match="unknown"):
        DiTConfig.from_dict({**config.to_dict(), "window_size": 3})
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(dim=30, num_heads=4)
    with pytest.raises(KeyError):
        get_config("wan-99b")
