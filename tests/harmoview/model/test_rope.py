"""3D RoPE and Jump-RoPE positions against hand-computed values."""

from __future__ import annotations

import math

import torch

from harmoview import reference_layout
from harmoview.model.references import SINK_OWNER
from harmoview.model.rope import (
    grid_positions,
    identity_block_starts,
    reference_positions,
    rope_angles,
    rope_apply,
    rope_axis_dims,
)


def test_axis_split_follows_wan():
    assert rope_axis_dims(128) == (44, 42, 42)  # 1.3B / 14B head dim
    assert rope_axis_dims(16) == (8, 4, 4)


def test_video_grid_is_t_major():
    pos = grid_positions(2, 2, 3)
    assert pos.shape == (12, 3)
    assert pos[:4].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0]]
    assert pos[-1].tolist() == [1, 1, 2]


def test_single_identity_gap_zero_is_consecutive_after_video():
    # Phantom-style: 5 view slots become frames 3..7 right after a 3-frame video.
    pos = reference_positions(num_identities=1, num_slots=5, num_h=2, num_w=2, num_frames=3, gap=0)
    assert pos.shape == (5 * 4, 3)
    assert pos[:, 0].unique().tolist() == [3, 4, 5, 6, 7]
    assert pos[:4].tolist() == [[3, 0, 0], [3, 0, 1], [3, 1, 0], [3, 1, 1]]
    assert pos[4].tolist() == [4, 0, 0]


def test_identity_blocks_jump_by_gap():
    # identity k starts at F + k * (S + gap): 3, 3+5+4=12, 12+5+4=21
    assert identity_block_starts(3, num_frames=3, num_slots=5, gap=4) == [3, 12, 21]
    assert identity_block_starts(3, num_frames=3, num_slots=5, gap=0) == [3, 8, 13]
    pos = reference_positions(3, 5, 1, 1, num_frames=3, gap=4)
    assert pos[:, 0].tolist() == [3, 4, 5, 6, 7, 12, 13, 14, 15, 16, 21, 22, 23, 24, 25]


def test_layout_places_sinks_after_last_identity(tiny):
    layout = reference_layout(tiny, num_identities=2, num_video_frames=3)  # gap 4, 2x2 tokens per view
    per_identity = 5 * 4
    assert layout.positions.shape == (2 * per_identity + tiny.num_sink_tokens, 3)
    assert layout.owners[:per_identity].eq(0).all() and layout.owners[per_identity:-2].eq(1).all()
    assert layout.owners[-2:].eq(SINK_OWNER).all()
    assert layout.positions[per_identity].tolist() == [12, 0, 0]
    assert layout.positions[-2:].tolist() == [[21, 0, 0], [21, 0, 1]]  # 12 + 5 + 4


def test_angles_hand_computed():
    head_dim = 12  # split 4 / 4 / 4 -> pairs: t (2), h (2), w (2)
    rotations = rope_angles(torch.tensor([[2, 3, 5]]), head_dim, theta=100.0)
    # each axis: inv_freq = [1, 100**(-2/4)] = [1, 0.1]
    expected = [2.0, 0.2, 3.0, 0.3, 5.0, 0.5]
    torch.testing.assert_close(rotations.real[0], torch.tensor([math.cos(a) for a in expected]))
    torch.testing.assert_close(rotations.imag[0], torch.tensor([math.sin(a) for a in expected]))


def test_rope_apply_rotates_channel_pairs():
    x = torch.randn(2, 6, 3, 12)  # (B, L, H, d)
    rotations = rope_angles(grid_positions(1, 2, 3), 12)
    cos, sin = rotations.real[:, None], rotations.imag[:, None]  # (L, 1, d/2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    expected = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    torch.testing.assert_close(rope_apply(x, rotations), expected)
    # rotating by position 0 is the identity; the dot product of two rotated vectors depends only on
    # their relative position
    torch.testing.assert_close(rope_apply(x, rope_angles(torch.zeros(6, 3, dtype=torch.long), 12)), x)
    q, k = torch.randn(1, 1, 1, 12), torch.randn(1, 1, 1, 12)
    t = 3
    dot = [(rope_apply(q, rope_angles(torch.tensor([[t + s, 2, 1]]), 12)) *
            rope_apply(k, rope_angles(torch.tensor([[s, 0, 0]]), 12))).sum() for s in (0, 7)]  # fmt: skip
    torch.testing.assert_close(dot[0], dot[1], atol=1e-5, rtol=0)
