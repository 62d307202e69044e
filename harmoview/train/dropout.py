"""View dropout (HarmoView's Progressive View Curriculum): hide references and text at random in training.

Three independent events, each with its own probability from the stage config:

- per identity, each present reference view is dropped with `p_view`; if that would drop them all, one
  present view (chosen uniformly) is kept, so an identity never loses every view while references are on.
  The model thus learns from any subset of views; the learnable proxy tokens take the dropped slots.
  Frequency of keeping one given view of an identity with k present views: (1 - p) + p^k / k.
- per step, all references (and the MFI features) are dropped with `p_all_refs`: a plain text-to-video
  step that keeps the backbone's ability (stage 4's "text-only" steps). It is one decision per step,
  shared by every rank, so that FSDP's collectives see the same modules used on every rank.
- per sample, the caption is replaced by the empty prompt with `p_text` (classifier-free guidance
  needs the unconditional branch).

Randomness comes from generators the trainer seeds per (seed, step, sample), so a resumed run, a
different world size or a different batch layout draw exactly the same events for the same sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(kw_only=True, slots=True)
class ViewDropout:
    """Probabilities of the three dropout events (all 0 = no dropout)."""

    p_view: float = 0.0
    """Each present reference view of an identity is dropped with this probability (one is always kept)."""
    p_all_refs: float = 0.0
    """A whole step runs without references: text-to-video (decided once per step for all ranks)."""
    p_text: float = 0.0
    """A sample's caption is replaced by the empty prompt."""

    def __post_init__(self) -> None:
        for name in ("p_view", "p_all_refs", "p_text"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is not a probability")

    def drop_views(self, present: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """present (N, S) bool of one sample -> the views kept (N, S); identities with views keep >= 1."""
        if self.p_view == 0.0:
            return present.clone()
        n, s = present.shape
        draws = torch.rand(n, s, generator=generator)  # (N, S)
        # One extra draw per identity picks the view restored when all were dropped; drawn always, so the
        # number of random numbers consumed does not depend on the outcome.
        rescue = torch.rand(n, generator=generator)  # (N,)
        kept = present & (draws >= self.p_view)
        for i in range(n):
            if present[i].any() and not kept[i].any():
                candidates = present[i].nonzero().flatten()
                kept[i, candidates[int(rescue[i] * len(candidates))]] = True
        return kept

    def drop_text(self, generator: torch.Generator) -> bool:
        """True when this sample's caption is replaced by the empty prompt."""
        return bool(torch.rand((), generator=generator) < self.p_text)

    def drop_all_refs(self, generator: torch.Generator) -> bool:
        """True when this step runs without any reference (text-to-video)."""
        return bool(torch.rand((), generator=generator) < self.p_all_refs)
