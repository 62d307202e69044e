"""Reading a checkpoint one file and one tensor at a time, in the dtype it is stored in.

A Wan 14B checkpoint is ~28 GB of bf16 in several `*.safetensors` files; read whole and upcast to fp32 it
took ~84 GB of host memory on the rank that loaded it. A `CheckpointSource` reads the headers first (names,
shapes: what a load report needs before anything changes), then hands out one tensor at a time, file after
file; the loader converts each to its parameter's dtype only as it copies it in, and a sharded (FSDP2)
parameter reads only the rows of its local shard (a safetensors slice reads just those bytes).
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

# Prefixes some Wan exports put in front of every key (ComfyUI, training wrappers).
STRIP_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
_UNREADABLE = (SafetensorError, RuntimeError, OSError)


def strip_prefix(keys: list[str]) -> dict[str, str]:
    """stored key -> key without the wrapper prefix that *every* key carries (unchanged when none does)."""
    for prefix in STRIP_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            return {k: k.removeprefix(prefix) for k in keys}
    return {k: k for k in keys}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: the file itself, the shards a diffusers
    `*.safetensors.index.json` names (in file order), or every `*.safetensors` of a folder."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {path}")
    return files


@dataclass
class TensorRef:
    """One stored tensor, not yet read: `read()` returns it in its stored dtype, `read(rows)` only those rows."""

    key: str
    shape: tuple[int, ...]
    read_rows: Callable[[slice | None], torch.Tensor]
    file: Path | None = None
    """The safetensors file it is stored in (None for a state dict in memory)."""

    def read(self, rows: slice | None = None) -> torch.Tensor:
        return self.read_rows(rows)


class CheckpointSource:
    """The tensors of a checkpoint (a state dict in memory or safetensors files) under their unprefixed keys."""

    def __init__(self, files: list[Path] | None = None, state: dict[str, torch.Tensor] | None = None) -> None:
        self.files, self.state = files or [], state
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._file_keys: list[dict[str, str]] = []  # per file: stored key -> key
        if state is not None:
            self._keys = strip_prefix(list(state))
            self._shapes = {self._keys[k]: tuple(v.shape) for k, v in state.items()}
            return
        per_file: list[dict[str, tuple[int, ...]]] = []  # stored key -> shape, from each file's header
        for file in self.files:
            with _open(file) as f:
                per_file.append({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
        renamed = strip_prefix([k for shapes in per_file for k in shapes])
        self._shapes = {renamed[k]: shape for shapes in per_file for k, shape in shapes.items()}
        self._file_keys = [{k: renamed[k] for k in shapes} for shapes in per_file]

    @classmethod
    def open(cls, path: str | Path) -> CheckpointSource:
        """A .safetensors file or folder (read lazily), or a .pt/.pth file (memory-mapped by torch.load)."""
        path = Path(path)
        if path.is_dir() or path.suffix == ".safetensors":
            return cls(files=checkpoint_files(path))
        try:
            return cls(state=torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise ValueError(f"{path} is not a readable weights file ({first_line(exc)})") from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """key -> shape of every tensor, from the headers (nothing read)."""
        return dict(self._shapes)

    def items(self) -> Iterator[TensorRef]:
        """Every tensor, file after file; each file is open only while its own tensors are handed out, so read a
        `TensorRef` before asking for the next one."""
        if self.state is not None:
            for stored, tensor in self.state.items():
                yield TensorRef(self._keys[stored], tuple(tensor.shape), lambda rows, t=tensor: _rows(t, rows))
            return
        for file, keys in zip(self.files, self._file_keys, strict=True):
            with _open(file) as f:
                for stored, key in keys.items():
                    yield TensorRef(
                        key, self._shapes[key], lambda rows, s=stored, f=f, p=file: _read(f, s, rows, p), file
                    )


def _rows(tensor: torch.Tensor, rows: slice | None) -> torch.Tensor:
    return tensor if rows is None else tensor[rows]


def _read(f, key: str, rows: slice | None, file: Path) -> torch.Tensor:
    try:
        return f.get_tensor(key) if rows is None else f.get_slice(key)[rows]
    except _UNREADABLE as exc:  # a truncated file has a valid header and too few bytes
        raise ValueError(
            f"{file} is not a readable safetensors file ({first_line(exc)}): copy or export it again"
        ) from None


@contextlib.contextmanager
def _open(file: Path) -> Iterator:
    """`safe_open` whose failure (truncated, garbage, unreadable) is one line naming the file."""
    try:
        handle = safe_open(str(file), framework="pt")
    except _UNREADABLE as exc:
        raise ValueError(
            f"{file} is not a readable safetensors file ({first_line(exc)}): copy or export it again"
        ) from None
    with handle as f:
        yield f
