"""Shared fixtures: real media from ../shared/media, real models from ../shared/models, each stack once."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
MEDIA = SHARED / "media"
MODELS = SHARED / "models"
STILLS = MEDIA / "stills"
HAMILTON = MEDIA / "videos" / "hamilton_white_house.mp4"

if not MEDIA.is_dir() or not MODELS.is_dir():
    pytest.skip(f"shared media/models not found at {SHARED}", allow_module_level=True)


def _read_still(name: str) -> np.ndarray:
    image = cv2.imread(str(STILLS / name))
    assert image is not None, name
    return image


@pytest.fixture(scope="session")
def still():
    """``still(name)``: a BGR still from the shared media."""
    return _read_still


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The shared models folder (YuNet, FSA-Net, SHA256SUMS, the det-only insightface pack)."""
    return MODELS


def video_frames(path: Path, indices: set[int]) -> dict[int, np.ndarray]:
    """Frames ``indices`` of a video, decoded sequentially (no seeking)."""
    capture = cv2.VideoCapture(str(path))
    frames: dict[int, np.ndarray] = {}
    index = 0
    while len(frames) < len(indices):
        ok, frame = capture.read()
        if not ok:
            break
        if index in indices:
            frames[index] = frame
        index += 1
    capture.release()
    return frames


@pytest.fixture(scope="session")
def hamilton_frames() -> dict[int, np.ndarray]:
    """Frames of the labelled Hamilton close-up (Alex Lacamoire in profile, facing frame-left)."""
    return video_frames(HAMILTON, {30, 40, 50})


@pytest.fixture(scope="session")
def default_stack(models_dir):
    """The YuNet + FSA-Net + dlib stack, loaded once."""
    from datakit.faces import build_face_stack

    return build_face_stack("yunet", models_dir=models_dir)


@pytest.fixture(scope="session")
def fallback_stack():
    """The pip-only stack as ``auto`` picks it when no models directory is configured."""
    from datakit.faces import build_face_stack

    with pytest.MonkeyPatch.context() as patch:  # only while building: other tests keep the environment
        patch.delenv("DATAKIT_MODELS_DIR", raising=False)
        patch.setenv("XDG_CACHE_HOME", str(SHARED / "no-such-cache"))  # a user's fetched models must not count
        return build_face_stack("auto", models_dir=None)
