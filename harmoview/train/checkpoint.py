"""Training checkpoints: sharded model / optimiser / EMA state with torch.distributed.checkpoint, plus the
trainer's own state (step, data positions, counters, every RNG) - atomic, resumable at any world size.

Layout of `<out>/checkpoints/step_00000100/`:
    __0_0.distcp ..., .metadata     DCP shards of {"model", "optim", "ema"} (one file per writing rank)
    trainer.json                    step, data position of each rank, counters, config
    rng_rank{r}.pt                  torch / CUDA / numpy / python RNG states of rank r, as tensors and numbers

A checkpoint is written to `step_N.tmp` and renamed when every rank has finished, so a run killed while
writing leaves only a `.tmp` folder that is ignored (and removed) on resume. DCP reshards on load: a
checkpoint written by 2 processes loads into 1 (or 8). Names are free of wrappers (activation checkpointing,
torch.compile, FSDP1: `parallel.canonical_name`), so a run resumes however its model is wrapped.

On resume (`resume_latest`) an unreadable checkpoint (truncated or missing shard, garbage metadata or
trainer.json) is named in one line and the previous kept one is tried; `config_changes` lists the settings
a resumed run would change (the trainer refuses them unless asked).

Nothing in a checkpoint folder is unpickled as code: a checkpoint is data that may come from elsewhere, and a
pickle can run anything when loaded. RNG states are tensors and plain numbers read with
``torch.load(weights_only=True)``; DCP's own ``.metadata`` pickle is read by an unpickler that knows only
DCP's metadata classes, and its non-tensor entries (optimiser settings) with ``weights_only=True``. A file
that needs more (an older harmoview's pickled RNG states, a crafted file) is refused with
:class:`CheckpointError`, never unpickled.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import shutil
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from tqdm import tqdm

from harmoview.train.optim import EMA
from harmoview.train.parallel import Distributed, barrier, canonical_name

_PREFIX = "step_"
_RNG_FORMAT = 2  # 1 (unversioned): a pickle of numpy arrays and python tuples, refused since


class CheckpointError(ValueError):
    """A checkpoint file that is unreadable (truncated, garbage) or would have to be unpickled (old or crafted);
    the message, one line, names it."""


class ConfigChangeError(ValueError):
    """A resume whose config differs from the checkpoint's (the message names the differing settings)."""


# Settings that change how a run goes, not what it computes: they may differ on resume without a word.
# (`steps` may grow; `data.batch_size` may change with the world size when the global batch stays.)
RESUME_FREE_SETTINGS = frozenset({
    "num_workers", "checkpoint_every", "keep_checkpoints", "log_every", "preview_every", "preview_steps",
    "activation_checkpointing",
})  # fmt: skip


def checkpoint_dir(out: Path) -> Path:
    """The folder of a run's `step_N/` checkpoints."""
    return Path(out) / "checkpoints"


def kept_checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints of a training output directory, newest first."""
    root = checkpoint_dir(out)
    return sorted((p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp")), reverse=True)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint of a training output directory, or None."""
    done = kept_checkpoints(out)
    return done[0] if done else None


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
    state = {"model": model_state, "optim": optim_state, "ema": _ema_state(ema)}
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
    trainer_state = read_trainer_state(path)  # a torn trainer.json fails before any weight is touched
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state, "ema": _ema_state(ema)}
    reader = _SafeReader(path)
    metadata_file = path / ".metadata"
    if not metadata_file.is_file():
        raise CheckpointError(f"{metadata_file} is missing: the checkpoint is incomplete")
    _check_shards(path, reader.read_metadata())  # CheckpointError here, not wrapped by DCP's rank errors
    try:
        with _single_process_ok():
            dcp.load(state, storage_reader=reader, planner=_SafePlanner())
    except CheckpointException as exc:  # a BaseException: one line naming the checkpoint, not 60 lines
        raise CheckpointError(f"{path} is unreadable ({_dcp_failure(exc)})") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if ema is not None:
        current = {canonical_name(name): name for name in ema.state_dict()}
        ema.load_state_dict({current[name]: value for name, value in state["ema"].items()})
    rng_file = path / f"rng_rank{dist_info.rank}.pt"
    if rng_file.exists() and trainer_state.get("world_size") == dist_info.world_size:
        _set_rng_state(_read_rng_state(rng_file))
    return trainer_state


def read_trainer_state(path: Path) -> dict:
    """A checkpoint's `trainer.json` (step, positions, counters, config); CheckpointError when unreadable."""
    file = Path(path) / "trainer.json"
    try:
        state = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is unreadable ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{file} is not a harmoview trainer state (no step)")
    return state


def resume_latest(
    out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None, dist_info: Distributed,
    check: Callable[[Path, dict], None] | None = None,
) -> tuple[Path | None, dict | None]:  # fmt: skip
    """Load the newest readable checkpoint of `out`: (its path, trainer state), or (None, None) without any.

    `check(path, trainer_state)` runs before the weights are read (e.g. to refuse another config). An
    unreadable checkpoint (truncated shard, garbage metadata or trainer.json) is reported in one line and the
    previous kept one is tried; when none is readable, CheckpointError names each.
    """
    kept, failures = kept_checkpoints(out), []
    for path in kept:
        try:
            if check is not None:
                check(path, read_trainer_state(path))
            return path, load_checkpoint(path, model, optimizer, ema, dist_info)
        except CheckpointError as exc:
            failures.append(str(exc))
            if dist_info.is_main:
                fallback = "the previous kept checkpoint" if path != kept[-1] else "no older checkpoint is kept"
                tqdm.write(f"checkpoint {path.name} is unreadable: {exc}; {fallback}")
    if failures:
        raise CheckpointError(f"no readable checkpoint in {checkpoint_dir(out)}: {' | '.join(failures)}")
    return None, None


def config_changes(saved: dict, current: dict, *, saved_world_size: int = 1, world_size: int = 1) -> list[str]:
    """The settings of `current` (a `TrainConfig.to_dict()`) that differ from a checkpoint's `saved` config, as
    "lr 0.001 -> 0.002" phrases. `RESUME_FREE_SETTINGS` may differ, `steps` may grow, and `data.batch_size`
    may change when the global batch (batch_size x processes) stays."""
    old, new = _flatten(_plain(saved)), _flatten(_plain(current))
    changes = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, "(unset)"), new.get(key, "(unset)")
        if before == after or key in RESUME_FREE_SETTINGS:
            continue
        if key == "steps" and isinstance(before, int) and isinstance(after, int) and after > before:
            continue
        if key == "data.batch_size" and before * saved_world_size == after * world_size:
            continue
        changes.append(f"{key} {before} -> {after}")
    return changes


def _plain(config: dict) -> dict:
    """JSON round trip: tuples become lists, so a config compares equal to its config.json / trainer.json."""
    return json.loads(json.dumps(config, default=str))


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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


def _ema_state(ema: EMA | None) -> dict[str, torch.Tensor]:
    """The EMA's shadow weights under wrapper-free names (`canonical_name`), as the model state has them."""
    return {canonical_name(name): value for name, value in ema.state_dict().items()} if ema else {}


def _check_shards(path: Path, metadata: Metadata) -> None:
    """Every byte range the metadata points to exists: a truncated or missing shard named before DCP reads."""
    sizes: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        name = str(getattr(info, "relative_path", ""))
        if not name:
            continue
        if name not in sizes:
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"{file} is missing (the checkpoint's metadata lists it)")
            sizes[name] = file.stat().st_size
        if info.offset + info.length > sizes[name]:
            raise CheckpointError(
                f"{path / name} is truncated ({sizes[name]} bytes, the metadata needs {info.offset + info.length})"
            )


def _dcp_failure(exc: CheckpointException) -> str:
    """The first rank's underlying error of a DCP failure, as one line."""
    failures = list(getattr(exc, "failures", {}).values())
    inner = failures[0] if failures else exc
    inner = inner[0] if isinstance(inner, tuple) else inner  # DCP pairs each rank's error with its traceback
    text = str(inner).strip()
    return (text.splitlines()[0] if text else type(inner).__name__)[:300]


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict:
    """Every RNG state as tensors and plain numbers (what ``torch.load(weights_only=True)`` reads back)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # ("MT19937", (624,) uint32, int, int, float)
    version, internal, gauss_next = random.getstate()  # (3, 625 ints < 2**32, float | None)
    state = {
        "format": _RNG_FORMAT,
        "torch": torch.get_rng_state(),  # uint8 tensor
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()  # list of uint8 tensors
    return state


def _read_rng_state(path: Path) -> dict:
    """An ``rng_rank{r}.pt`` file, read as tensors and numbers only; CheckpointError for anything else."""
    advice = (
        "it is not unpickled (a pickle can run code); delete the checkpoint's rng_rank*.pt files to resume "
        "without restoring RNG states (they only affect randomness outside the training step)"
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} holds more than tensors (an older harmoview or a crafted file: {first}): "
                              f"{advice}") from None  # fmt: skip
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path} is not a readable RNG state file ({exc}): {advice}") from None
    if not isinstance(state, dict) or state.get("format") != _RNG_FORMAT:
        raise CheckpointError(f"{path} is not an RNG state file of this harmoview (format {_RNG_FORMAT}): {advice}")
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- reading DCP checkpoints without unpickling code ----------------------------------------------------------

#: The globals DCP's ``.metadata`` pickle needs (torch 2.4-2.x): its metadata classes, Size, dtypes, layouts,
#: the file reader's storage info, and paths. Anything else is refused.
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata", "BytesStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata: the classes above and torch dtypes, nothing that could run code."""

    def find_class(self, module: str, name: str):
        if name in _METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP checkpoint metadata")


class _SafeReader(FileSystemReader):
    """DCP's file reader with its ``.metadata`` pickle read by :class:`_MetadataUnpickler`."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        rank = kwargs.get("rank")
        path = Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")
        try:
            with open(path, "rb") as file:
                metadata = _MetadataUnpickler(file).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{path} is not DCP checkpoint metadata, refused without running it ({exc})"
            ) from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path} is not DCP checkpoint metadata (a {type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafePlanner(DefaultLoadPlanner):
    """DCP's default load planner, reading non-tensor entries (optimiser settings) with ``weights_only``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as exc:
            where = read_item.dest_index.fqn
            raise CheckpointError(f"checkpoint entry {where} holds more than plain data: refused ({exc})") from None
        # The parent places the value in the state dict (through its flattening map); it unpickles fully,
        # so it is handed the plain data just read, written again by us - never the file's own bytes.
        clean = io.BytesIO()
        torch.save(loaded, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)
