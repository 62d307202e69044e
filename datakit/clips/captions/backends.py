"""The configured caption backend, built: the one place that knows every backend module.

It sits above the interface (:mod:`datakit.clips.captions.base`) and the backends that implement it, so
that the interface never imports a backend (each backend imports the interface).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from datakit.clips.captions.base import NOT_CONFIGURED_HINT, Captioner, CaptionerConfigError, validate

if TYPE_CHECKING:
    from datakit.config import BuildConfig


def make_captioner(cfg: BuildConfig) -> Captioner:
    """Build the configured backend (loads the model for ``qwen2.5-vl``)."""
    validate(cfg)
    # The backends import their heavy libraries (transformers, torch) on use: import only the chosen one.
    if cfg.captioner == "qwen2.5-vl":
        from datakit.clips.captions.qwen import QwenVLCaptioner

        return QwenVLCaptioner.from_config(cfg)
    if cfg.captioner == "openai":
        from datakit.clips.captions.openai_api import OpenAICaptioner

        return OpenAICaptioner.from_config(cfg)
    raise CaptionerConfigError(NOT_CONFIGURED_HINT)
