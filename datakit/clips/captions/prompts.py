"""Versioned caption prompts. A caption records the version it was made with (``caption_prompt_version``).

Never edit a released prompt in place: add a new version, so that captions made with the old text stay
identifiable and a run can hold captions of several versions side by side.
"""

from __future__ import annotations

#: v1: in the spirit of OpenS2V-Nexus / Open-Sora captions - the people (appearance, clothing, action),
#: the scene, the camera; no names, no guesses about identity, one paragraph.
PROMPTS: dict[str, str] = {
    "v1": (
        "You are given frames sampled in order from one video clip. Write one paragraph (60-120 words) that "
        "describes the clip for training a text-to-video model. Describe each visible person: apparent age "
        "range and gender presentation, hair, facial features such as glasses or a beard, clothing and "
        "accessories, expression, and what they do (speaking, turning the head, gesturing, walking). Then "
        "describe the setting and background, the lighting, and the camera: shot size (close-up, medium, "
        "wide), angle, and whether it is static or moves (pan, tilt, zoom, handheld). Describe only what is "
        "visible. Never name or guess who a person is, and do not mention the frames, the video or this "
        "instruction. Start directly with the description."
    ),
}

DEFAULT_PROMPT_VERSION = "v1"


def get_prompt(version: str) -> str:
    """The prompt text of ``version``; a clear error naming the known versions otherwise."""
    try:
        return PROMPTS[version]
    except KeyError:
        raise ValueError(
            f"unknown caption prompt version {version!r}; known: {', '.join(sorted(PROMPTS))} "
            "(datakit/captions/prompts.py)"
        ) from None
