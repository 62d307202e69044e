"""Fixtures of the HarmoView model tests (helpers live in tests/harmoview/model/helpers.py)."""

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


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory):
    """The real encoder classes at tiny random sizes, saved and reloaded through from_pretrained."""
    from harmoview.testing import write_tiny_encoders

    return write_tiny_encoders(tmp_path_factory.mktemp("encoders"))


@pytest.fixture(scope="session")
def tiny_init(tmp_path_factory):
    """A tiny HarmoView checkpoint folder, the `--init` of stage-1 tests: a "pretrained" backbone (perturbed
    away from Wan's init, whose zero head would block every gradient) and freshly initialised new modules."""
    from harmoview import build_model, save_checkpoint
    from tests.harmoview.model.helpers import pretrained_like

    torch.manual_seed(0)
    model, _ = build_model(get_config("tiny"))
    return save_checkpoint(pretrained_like(model), tmp_path_factory.mktemp("init") / "tiny")
