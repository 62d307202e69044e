"""Training checkpoints: sharded model / optimiser / EMA state with torch.distributed.checkpoint, plus the
trainer's own state (step, data positions, counters, every RNG) - atomic, resumable at any world size.

Layout of `<out>/checkpoints/step_00000100/`:
    __0_0.distcp ..., .metadata     DCP shards of {"model", "optim", "ema"} (one file per writing rank)
    trainer.json                    step, data position of each rank, counters, config
    rng_rank{r}.pt                  torch / CUDA / numpy / python RNG states of rank r

A checkpoint is written to `step_N.tmp` and renamed when every rank has finished, so a run killed while
writing leaves only a `.tmp` folder that is ignored (and removed) on resume. DCP reshards on load: a
checkpoint written by 2 processes loads into 1 (or 8).
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from harmoview.train.optim import EMA
from harmoview.train.parallel import Distributed, barrier

_PREFIX = "step_"


def checkpoint_dir(out: Path) -> Path:
    """The folder of a run's `step_N/` checkpoints."""
    return Path(out) / "checkpoints"


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint of a training output directory, or None."""
    root = checkpoint_dir(out)
    done = sorted(p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def save_checkpoint(
    out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
    trainer_state: dict, dist_info: Distributed, keep: int,
) -> Path:  # fmt: skip
    """Write the checkpoint of `step` (all ranks call this); returns its directory."""
    final = checkpoint_dir(out) / f"{_PREFIX}{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if dist_info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state, "ema": ema.state_dict() if ema else {}}
    with _single_process_ok():
        dcp.save(state, checkpoint_id=str(tmp))
    torch.save(_rng_state(), tmp / f"rng_rank{dist_info.rank}.pt")
    if dist_info.is_main:
        (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=2))
    barrier()
    if dist_info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _prune(checkpoint_dir(out), keep)
    barrier()
    return final


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None, dist_info: Distributed
) -> dict:
    """Restore model, optimiser and EMA from `path` (any world size); returns the trainer state.

    RNG states are restored only when the rank wrote them (same world size); the trainer draws its
    randomness from per-step generators, so they matter only to code outside the training step.
    """
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state, "ema": ema.state_dict() if ema else {}}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    trainer_state = json.loads((path / "trainer.json").read_text())
    rng_file = path / f"rng_rank{dist_info.rank}.pt"
    if rng_file.exists() and trainer_state.get("world_size") == dist_info.world_size:
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return trainer_state


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state on CPU (gathered on every rank; FSDP-aware, plain names)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def remove_incomplete(out: Path) -> None:
    """Delete `.tmp` checkpoints left by a run killed while writing."""
    for tmp in checkpoint_dir(out).glob(f"{_PREFIX}*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _single_process_ok():
    """DCP warns that it "assumes" a single process when no process group exists; that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
