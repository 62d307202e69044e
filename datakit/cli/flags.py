"""How a ``datakit`` command is declared: :func:`add_command` (its parser and its runner), and the flags
that several commands share, declared once here.

A flag that sets a ``BuildConfig`` field keeps the field's name as its ``dest`` and defaults to None, so that
a value from ``--config`` or a run's ``run.json`` is only overridden when the flag is given; its help shows the
field's own default (:func:`config_default`), never a number typed in here that could drift from it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path

from datakit.config import BuildConfig

__all__ = [
    "add_caption_flags",
    "add_command",
    "add_config_flag",
    "add_face_stack_flags",
    "add_json_flag",
    "add_manifests",
    "add_models_dir",
    "add_quiet",
    "add_ray_flags",
    "config_default",
    "config_overrides",
]

_FIELDS = {f.name: f for f in fields(BuildConfig)}
#: where the model files are looked for when no folder is given (datakit.faces.model_files.resolve_models_dir)
MODELS_DIR_DEFAULT = "DATAKIT_MODELS_DIR, else the per-user cache folder that `datakit models` shows"


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    resumable: bool = False,
    user_errors: Callable[[], tuple[type[BaseException], ...]] | None = None,
    **parser_kw,
) -> argparse.ArgumentParser:
    """Register command ``name`` with its runner ``func`` (returns the exit status, raises user errors).

    ``resumable``: an interrupted run is finished by running the same command again (said when
    interrupted). ``user_errors``: returns the command's own exception classes that are user errors
    (imported only when one is raised, so that other commands do not import their modules).
    """
    p = sub.add_parser(name, **parser_kw)
    p.set_defaults(func=func, prog=p.prog, resumable=resumable, user_errors=user_errors)
    return p


def config_default(name: str) -> str:
    """The default of ``BuildConfig.<name>`` as help text shows it (``3.0`` as ``3``)."""
    spec = _FIELDS[name]
    value = spec.default_factory() if spec.default is MISSING else spec.default
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_config_flag(p: argparse._ActionsContainer, name: str, help: str, *, flag: str | None = None, **kw) -> None:
    """A flag for the ``BuildConfig`` field ``name`` (``--the-name`` unless ``flag``), help ending in its default."""
    p.add_argument(
        flag or "--" + name.replace("_", "-"), dest=name, help=f"{help} (default {config_default(name)})", **kw
    )


def config_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The parsed values of every flag that sets a ``BuildConfig`` field (None when not given)."""
    return {name: value for name, value in vars(args).items() if name in _FIELDS}


def add_manifests(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    """``--manifests/-m``: one run folder, or with ``several`` one or more (``-m A B`` or ``-m A -m B``)."""
    if several:
        how = {
            "nargs": "+",
            "action": "extend",
            "help": "one or more run folders written by `datakit build --out` (-m A B, or -m A -m B)",
        }
    else:
        how = {"help": "run folder written by `datakit build --out`"}
    p.add_argument("--manifests", "-m", type=Path, required=True, metavar="RUN", **how)


def add_models_dir(p: argparse._ActionsContainer, help: str) -> None:
    """``--models-dir``: the folder of the face stacks' model files; ``help`` says what it is for here."""
    p.add_argument("--models-dir", type=Path, metavar="DIR", help=help)


def add_face_stack_flags(p: argparse.ArgumentParser, *, recorded: bool) -> None:
    """The face stack's flags. ``recorded``: the stack is the one a run's ``run.json`` names and the flags
    only say where its files are here; otherwise they choose the stack of a new build."""
    if recorded:
        add_models_dir(p, "models folder, overriding the one recorded in run.json")
        p.add_argument("--insightface-pack", type=Path, metavar="DIR", help="insightface pack, overriding run.json's")
        return
    from datakit.faces import BACKENDS

    add_models_dir(p, f"folder with the YuNet/FSA-Net ONNX files (default: {MODELS_DIR_DEFAULT})")
    add_config_flag(
        p,
        "backend",
        "face stack; auto takes a configured or fetched insightface pack, else yunet when its files are there,"
        " else dlib",
        choices=BACKENDS,
    )
    p.add_argument(
        "--insightface-pack",
        type=Path,
        metavar="DIR",
        help="local insightface model pack folder (buffalo_l, ...) (default: DATAKIT_INSIGHTFACE_PACK)",
    )
    add_config_flag(
        p, "detect_max_side", "long side (px) frames are shrunk to for face detection; 0 = full size", type=int
    )


def add_ray_flags(p: argparse.ArgumentParser, *, workers_help: str) -> None:
    """``--workers`` and ``--address``: where a command that runs on Ray runs."""
    p.add_argument("--workers", type=int, metavar="N", help=workers_help)
    p.add_argument("--address", metavar="RAY", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")


def add_quiet(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress output (results and errors are still printed)."""
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_json_flag(p: argparse.ArgumentParser, what: str) -> None:
    """``--json``: print ``what`` as JSON instead of text."""
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def add_caption_flags(p: argparse.ArgumentParser) -> None:
    """The caption settings (``BuildConfig.caption_*``), for ``datakit build`` and ``datakit caption``."""
    from datakit.clips.captions.base import CAPTIONERS
    from datakit.clips.captions.prompts import PROMPTS

    g = p.add_argument_group("captions (datakit.clips.captions)")
    add_config_flag(g, "captioner", "caption backend; none = no captions", choices=CAPTIONERS)
    g.add_argument("--caption-model-dir", type=Path, metavar="DIR", help="qwen2.5-vl: local checkpoint folder")
    g.add_argument("--caption-base-url", metavar="URL", help="openai: server base URL, e.g. http://localhost:8000/v1")
    g.add_argument("--caption-api-model", metavar="NAME", help="openai: served model name (recorded as caption_model)")
    add_config_flag(g, "caption_api_key_env", "openai: variable holding the API key", metavar="VAR")
    add_config_flag(g, "caption_prompt_version", "prompt template", choices=sorted(PROMPTS))
    add_config_flag(g, "caption_frames", "frames sampled per clip", type=int, metavar="N")
    add_config_flag(g, "caption_max_pixels", "pixel budget per frame, width*height", type=int, metavar="N")
    add_config_flag(g, "caption_max_new_tokens", "longest caption in tokens", type=int, metavar="N")
    add_config_flag(g, "caption_batch_size", "clips per model call / per saved batch", type=int, metavar="N")
    add_config_flag(g, "caption_concurrency", "openai: requests in flight", type=int, metavar="N")
    add_config_flag(g, "caption_timeout_s", "openai: seconds to wait for an answer", type=float, metavar="S")
    add_config_flag(g, "caption_retries", "openai: retries on timeout/429/5xx", type=int, metavar="N")
    add_config_flag(g, "caption_retry_backoff_s", "openai: first retry wait, doubling", type=float, metavar="S")
