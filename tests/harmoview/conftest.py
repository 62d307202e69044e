"""Fixtures of the HarmoView model tests (helpers live in hv_helpers.py)."""

from __future__ import annotations

import pytest
import torch

from harmoview import DiTConfig, get_config


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny() -> DiTConfig:
    return get_config("tiny")
