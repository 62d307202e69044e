"""Fixtures of the HarmoView tests: tiny configs, encoders and checkpoints, the tiny pipeline, datakit's face
stack and a labelled photo (helpers live in tests/harmoview/helpers.py and the packages' helpers.py)."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
import torch

from harmoview import DiTConfig, build_model, get_config, save_checkpoint
from harmoview.pipeline import HarmoViewPipeline
from harmoview.testing import tiny_vit_layers
from tests.conftest import MODELS, STILLS, VIDEOS


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
    from tests.harmoview.model.helpers import pretrained_like

    torch.manual_seed(0)
    model, _ = build_model(get_config("tiny"))
    return save_checkpoint(pretrained_like(model), tmp_path_factory.mktemp("init") / "tiny")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny checkpoint with every weight perturbed: zero-initialised heads and gates would hide conditions."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = build_model(get_config("tiny"))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def pipe(tiny_ckpt, tiny_encoders) -> HarmoViewPipeline:
    """`HarmoViewPipeline` over the tiny checkpoint and encoders, on the CPU."""
    return HarmoViewPipeline.from_pretrained(
        tiny_ckpt, tiny_encoders, device="cpu", text_len=16, vit_layers=tiny_vit_layers
    )  # fmt: skip


@pytest.fixture(scope="session")
def face_stack():
    """datakit's default face stack (YuNet + FSA-Net) from ../shared/models, as `harmoview generate` loads it."""
    if not MODELS.is_dir() or not STILLS.is_dir():
        pytest.skip(f"shared media/models not found at {MODELS.parent}")
    from harmoview.photo_refs import load_face_stack

    return load_face_stack(MODELS)


@pytest.fixture(scope="session")
def hamilton_frame(tmp_path_factory) -> Path:
    """Frame 30 of the labelled Hamilton close-up: Alex Lacamoire in profile facing frame-left (the datakit
    tests' left_profile face) on the right, a frontal face in the audience on the left."""
    with av.open(str(VIDEOS / "hamilton_white_house.mp4")) as container:
        frame = next(f for i, f in enumerate(container.decode(video=0)) if i == 30).to_image()
    path = tmp_path_factory.mktemp("photos") / "hamilton30.png"
    frame.save(path)
    return path
