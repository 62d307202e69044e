"""Flags that several `harmoview` commands share, and defaults read from the Python API they call.

Help strings quote defaults from the dataclass or function behind a flag (`api_default`), so the help
cannot drift from the code that applies them.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

from harmoview.model.encoders import EncoderPaths, Encoders


def api_default(owner: Any, name: str) -> Any:
    """The default of field `name` of a dataclass, or of parameter `name` of a function."""
    if dataclasses.is_dataclass(owner):
        for f in dataclasses.fields(owner):
            if f.name == name:
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                if f.default is not dataclasses.MISSING:
                    return f.default
        raise KeyError(f"{owner.__name__}.{name} has no default")
    default = inspect.signature(owner).parameters[name].default
    if default is inspect.Parameter.empty:
        raise KeyError(f"{owner.__qualname__}({name}) has no default")
    return default


def positive_int(text: str) -> int:
    """argparse type of a count: an integer >= 1 (anything else is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (got {value})")
    return value


def finite_float(text: str) -> float:
    """argparse type of a real setting: a finite number (``nan``, ``inf`` are usage errors, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text!r})") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text})")
    return value


def add_encoder_flags(p: argparse.ArgumentParser) -> None:
    """The encoder folders (VAE, umT5 + tokenizer, MFI ViT) and how they are read; see `encoder_paths`."""
    text_len, vit_layers = (api_default(Encoders.load, name) for name in ("text_len", "vit_layers"))
    g = p.add_argument_group("encoders (local folders; nothing is downloaded)")
    g.add_argument("--wan-dir", type=Path, help="a diffusers Wan folder: takes its vae/, text_encoder/, tokenizer/")
    g.add_argument("--vae", type=Path, help="AutoencoderKLWan folder (overrides --wan-dir)")
    g.add_argument("--text-encoder", type=Path, help="UMT5EncoderModel folder (overrides --wan-dir)")
    g.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the text encoder's)")
    g.add_argument("--vit", type=Path, help="open_clip folder of the MFI ViT (none = MFI off for Wan inits)")
    g.add_argument(
        "--vit-layers", type=int, nargs="+", default=list(vit_layers),
        help=f"ViT depths MFI injects (default {' '.join(map(str, vit_layers))})",
    )  # fmt: skip
    g.add_argument("--text-len", type=positive_int, default=text_len, help="text tokens (default %(default)s, as Wan)")


def encoder_paths(args: argparse.Namespace) -> EncoderPaths:
    """The encoder folders of `add_encoder_flags`: --wan-dir's layout, single folders overriding it."""
    paths = EncoderPaths.from_wan_dir(args.wan_dir, vit=args.vit) if args.wan_dir else EncoderPaths(vit=args.vit)
    for name in ("vae", "text_encoder", "tokenizer"):
        if getattr(args, name) is not None:
            setattr(paths, name, getattr(args, name))
    return paths


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The datakit runs a command reads: `--manifests/-m` (repeatable) and the videos of each."""
    p.add_argument(
        "--manifests", "-m", type=Path, action="append", required=True, help="datakit run directory (repeatable)"
    )
    p.add_argument(
        "--video-root", type=Path, action="append", help="videos of each --manifests (default: run.json src)"
    )


def add_models_dir_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup, without: str) -> None:
    """datakit's face model files (YuNet, FSA-Net); `without` says what happens when none are found."""
    p.add_argument(
        "--models-dir", type=Path,
        help=f"datakit face model files (YuNet, FSA-Net; default $DATAKIT_MODELS_DIR or `datakit models fetch`'s "
        f"folder; without them: {without})",
    )  # fmt: skip


def add_quiet_flag(p: argparse.ArgumentParser) -> None:
    """--quiet: no progress bar."""
    p.add_argument("--quiet", action="store_true", help="no progress bar")
