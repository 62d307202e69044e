"""The captioner interface, the backends' names and settings check, and the frames a captioner receives.

The backends themselves (:mod:`datakit.clips.captions.qwen`, :mod:`datakit.clips.captions.openai_api`) build
on this module; :func:`datakit.clips.captions.backends.make_captioner` builds the configured one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image

    from datakit.config import BuildConfig

#: backend names accepted by ``--captioner`` / ``BuildConfig.captioner``
CAPTIONERS = ("none", "qwen2.5-vl", "openai")
NOT_CONFIGURED_HINT = (
    "no captioner configured: pass --captioner qwen2.5-vl --caption-model-dir DIR "
    "or --captioner openai --caption-base-url URL"
)


class CaptionerConfigError(ValueError):
    """The captioner settings are incomplete or wrong; the message names the flag to set."""


@dataclass(slots=True)
class ClipFrames:
    """Frames sampled in order from one clip (RGB, already shrunk to the pixel budget)."""

    clip_id: str
    frames: list[Image.Image]
    fps: float  #: rate of the sampled frames (frames / clip duration), for the model's temporal positions
    start_s: float = 0.0
    end_s: float = 0.0
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Captioner(Protocol):
    """A backend: ``name`` (registry name), ``model`` (what ``caption_model`` records), ``prompt_version``."""

    name: str
    model: str
    prompt_version: str

    def caption(self, batch: Sequence[ClipFrames]) -> list[str]:
        """One caption per clip, in order; raises when the batch cannot be captioned."""
        ...


def caption_each(captioner: Captioner, batch: Sequence[ClipFrames]) -> list[str | BaseException]:
    """Caption a batch, isolating failures: one caption or the exception per clip.

    Backends that fail per clip on their own (``caption_each`` method, e.g. the HTTP one) answer
    directly; otherwise a failed batch is retried clip by clip so one bad clip does not sink the others.
    """
    own = getattr(captioner, "caption_each", None)
    if own is not None:
        return list(own(batch))
    try:
        return list(captioner.caption(batch))
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
    out: list[str | BaseException] = []
    for clip in batch:
        try:
            out.append(captioner.caption([clip])[0])
        except Exception as exc:
            out.append(exc)
    return out


def model_dir_name(folder: str | Path) -> str:
    """The name a local checkpoint folder records: its own name, or ``Org/Name`` for a Hugging Face cache
    snapshot (``.../models--Org--Name/snapshots/<hash>``)."""
    path = Path(folder).absolute()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name[len("models--") :].replace("--", "/")
    return path.name


def caption_model_name(cfg: BuildConfig) -> str | None:
    """What ``caption_model`` records for this config, without loading or checking anything; None when no
    captioner (or not enough of its settings) is configured."""
    if cfg.captioner == "qwen2.5-vl" and cfg.caption_model_dir:
        return model_dir_name(cfg.caption_model_dir)
    if cfg.captioner == "openai" and cfg.caption_api_model:
        return str(cfg.caption_api_model)
    return None


def validate(cfg: BuildConfig) -> None:
    """Raise :class:`CaptionerConfigError` when the configured backend lacks a setting."""
    from datakit.clips.captions.prompts import get_prompt

    if cfg.captioner not in CAPTIONERS:
        raise CaptionerConfigError(f"unknown captioner {cfg.captioner!r}; choose one of {', '.join(CAPTIONERS)}")
    if cfg.captioner == "none":
        return
    get_prompt(cfg.caption_prompt_version)
    if cfg.caption_frames < 1:
        raise CaptionerConfigError("caption_frames must be >= 1")
    if cfg.captioner == "qwen2.5-vl":
        if cfg.caption_model_dir is None:
            raise CaptionerConfigError(
                "--captioner qwen2.5-vl needs a local model folder: pass --caption-model-dir DIR "
                "(a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint with its processor files; nothing is downloaded)"
            )
        folder = Path(cfg.caption_model_dir)
        if not (folder / "config.json").is_file():
            raise CaptionerConfigError(
                f"--caption-model-dir {folder}: no config.json there (a transformers checkpoint folder is needed)"
            )
    if cfg.captioner == "openai":
        if not cfg.caption_base_url:
            raise CaptionerConfigError(
                "--captioner openai needs the server: pass --caption-base-url URL (e.g. http://host:8000/v1)"
            )
        if not cfg.caption_api_model:
            raise CaptionerConfigError(
                "--captioner openai needs the served model name: pass --caption-api-model NAME "
                "(what the server lists under /v1/models)"
            )
