"""Clip captions: a captioner interface with named backends, and the resumable caption stage.

Backends (``BuildConfig.captioner`` / ``--captioner``):

- ``none`` (default): no captions; the run summary says how to configure one. Never a made-up caption.
- ``qwen2.5-vl``: a local Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint through transformers
  (``--caption-model-dir``), GPU (bf16) when present.
- ``openai``: an OpenAI-compatible chat-completions server such as vLLM (``--caption-base-url``,
  ``--caption-api-model``).

Prompts are versioned in :mod:`datakit.clips.captions.prompts`; every caption records ``caption_model`` and
``caption_prompt_version``. See :mod:`datakit.clips.captions.stage` (on :mod:`datakit.clips.base`) for
resume and errors.
"""

from datakit.clips.captions.backends import make_captioner
from datakit.clips.captions.base import (
    CAPTIONERS,
    NOT_CONFIGURED_HINT,
    Captioner,
    CaptionerConfigError,
    ClipFrames,
    caption_model_name,
)
from datakit.clips.captions.prompts import PROMPTS
from datakit.clips.captions.stage import (
    CaptionStage,
    CaptionSummary,
    attach_captions,
    read_captions,
)

__all__ = [
    "CAPTIONERS",
    "NOT_CONFIGURED_HINT",
    "PROMPTS",
    "CaptionStage",
    "CaptionSummary",
    "Captioner",
    "CaptionerConfigError",
    "ClipFrames",
    "attach_captions",
    "caption_model_name",
    "make_captioner",
    "read_captions",
]
