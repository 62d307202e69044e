"""Shared test fixtures: paths to the real media and models beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MEDIA = SHARED / "media"
VIDEOS = MEDIA / "videos"
STILLS = MEDIA / "stills"
MODELS = SHARED / "models"


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    if not VIDEOS.is_dir():
        pytest.fail(f"real test media missing: {VIDEOS} (../shared beside the checkout)")
    return VIDEOS


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS
