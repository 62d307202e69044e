"""Checkpoints are data: resuming restores every RNG from tensors, and a crafted pickle in a checkpoint folder
(an RNG file, DCP's metadata) is refused with a message naming it - its code never runs."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from harmoview.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from harmoview.train.parallel import Distributed

ONE_PROCESS = Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class _WritesMarker:
    """Unpickling this runs ``open(marker, "w").write("pwned")``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').write('pwned')",))


def _model_and_optimiser(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimiser.step()  # optimiser state (exp_avg, step) and param_groups (bytes entries) exist
    return model, optimiser


def _checkpoint(out: Path) -> Path:
    model, optimiser = _model_and_optimiser(0)
    return save_checkpoint(out, 5, model, optimiser, None, {"step": 5, "world_size": 1}, ONE_PROCESS, keep=2)


def test_resume_restores_weights_and_every_rng_without_unpickling(tmp_path):
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    np.random.standard_normal()  # numpy's cached Gaussian half is part of its state
    path = _checkpoint(tmp_path)
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    saved = _model_and_optimiser(0)[0].state_dict()

    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    model, optimiser = _model_and_optimiser(1)
    state = load_checkpoint(path, model, optimiser, None, ONE_PROCESS)

    assert state["step"] == 5
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name])
    assert optimiser.param_groups[0]["betas"] == (0.9, 0.999)  # a non-tensor entry, read with weights_only
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_crafted_rng_pickle_is_refused_and_never_run(tmp_path):
    path = _checkpoint(tmp_path / "run")
    marker = tmp_path / "marker"
    torch.save({"torch": _WritesMarker(marker)}, path / "rng_rank0.pt")  # torch.save pickles: a hostile file

    model, optimiser = _model_and_optimiser(1)
    with pytest.raises(CheckpointError, match=r"rng_rank0\.pt.*not unpickled"):
        load_checkpoint(path, model, optimiser, None, ONE_PROCESS)
    assert not marker.exists()


def test_old_pickled_rng_file_is_refused_with_advice(tmp_path):
    path = _checkpoint(tmp_path)
    old = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save(old, path / "rng_rank0.pt")  # what harmoview wrote before: numpy arrays need unpickling

    model, optimiser = _model_and_optimiser(1)
    with pytest.raises(CheckpointError, match=r"delete the checkpoint's rng_rank\*\.pt"):
        load_checkpoint(path, model, optimiser, None, ONE_PROCESS)
    os.remove(path / "rng_rank0.pt")  # the advice works: resume without restoring RNG states
    assert load_checkpoint(path, model, optimiser, None, ONE_PROCESS)["step"] == 5


def test_crafted_dcp_metadata_is_refused_and_never_run(tmp_path):
    path = _checkpoint(tmp_path / "run")
    marker = tmp_path / "marker"
    (path / ".metadata").write_bytes(pickle.dumps(_WritesMarker(marker)))

    model, optimiser = _model_and_optimiser(1)
    with pytest.raises(CheckpointError, match=r"\.metadata is not DCP checkpoint metadata"):
        load_checkpoint(path, model, optimiser, None, ONE_PROCESS)
    assert not marker.exists()
