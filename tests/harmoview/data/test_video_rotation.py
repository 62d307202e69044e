"""Training reads of phone footage with a display matrix: upright frames from decord and from PyAV, the same
frames datakit's curation decoded (so the recorded face boxes fall on the faces)."""

from __future__ import annotations

import numpy as np
import pytest

from harmoview.data.video_io import _read_decord, _read_pyav, read_frames
from tests.datakit.video.test_rotation import SINGLE_FACE, phone_copy, remux_with_rotation

INDICES = [0, 35, 71]


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    """(3, 360, 640, 3) RGB frames of the upright original."""
    return _read_pyav(SINGLE_FACE, INDICES)


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """single_face.mp4 stored sideways (portrait pixels) with a display matrix that turns it back."""
    return phone_copy(SINGLE_FACE, tmp_path_factory.mktemp("rot") / "phone.mp4", 90)


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.parametrize("reader", [_read_decord, _read_pyav, read_frames], ids=["decord", "pyav", "read_frames"])
def test_phone_copy_reads_upright(phone, original, reader):
    if reader is _read_decord:
        pytest.importorskip("decord")
    frames = reader(phone, INDICES)
    assert frames.shape == original.shape == (3, 360, 640, 3)
    assert _mean_abs(frames, original) < 3  # re-encoding loss only; sideways it would not even match in shape


@pytest.mark.parametrize("degrees", [90, 180])
def test_metadata_only_copy_pyav_and_decord_agree(tmp_path, original, degrees):
    """The same packets with a display matrix: PyAV turns the original's exact pixels, decord agrees."""
    rotated = remux_with_rotation(SINGLE_FACE, tmp_path / f"rot{degrees}.mp4", degrees)
    turned = np.stack([np.rot90(frame, degrees // 90) for frame in original])
    pyav = _read_pyav(rotated, INDICES)
    assert np.array_equal(pyav, turned)
    pytest.importorskip("decord")
    decord = _read_decord(rotated, INDICES)
    assert decord.shape == turned.shape and _mean_abs(decord, turned) < 2  # decord's own YUV->RGB rounding
