"""View dropout (HarmoView's Progressive View Curriculum): hide references and text at random in training.

Four events, each with its own probability from the stage config (the recipe table in
`harmoview.train.recipes` lists every stage's values):

- per identity, each present reference view is dropped with `p_view`; if that would drop them all, one
  present view (chosen uniformly) is kept, so an identity never loses every view while references are on.
  The model thus learns from any subset of views; the learnable proxy tokens take the dropped slots.
  Frequency of keeping one given view of an identity with k present views: (1 - p) + p^k / k.
- per micro-batch, one draw decides its conditions (`draw_step`), three disjoint outcomes:
  - with `p_uncond` the micro-batch is *unconditional*: no references, no MFI features and the empty prompt
    for every sample - the branch that three-way guidance (`--ref-scale`, `--text-scale`) extrapolates
    from. Without it, that branch would be trained only when the two events below coincide;
  - with `p_all_refs` it is *text-to-video*: no references and no MFI features, captions as drawn below
    (stage 4's "text-only" steps that keep the backbone's ability);
  - otherwise references are on.
  The decision is shared by every rank, so that FSDP's collectives see the same modules used everywhere.
- per sample, the caption is replaced by the empty prompt with `p_text` (the references-only branch of
  guidance; on text-to-video micro-batches it also yields unconditional samples).

So a sample trains unconditionally with probability p_uncond + p_all_refs * p_text (`uncond_rate`).

Randomness comes from generators the trainer seeds per (seed, stage, step, micro-batch, sample), so a
resumed run, a different world size or a different batch layout draw exactly the same events for the same
sample, while two stages (e.g. stages 3 and 4) draw different ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PROBABILITIES = ("p_view", "p_all_refs", "p_uncond", "p_text")


@dataclass(frozen=True, slots=True)
class StepConditions:
    """What one micro-batch is conditioned on (drawn by `ViewDropout.draw_step`)."""

    refs_on: bool
    """References (and MFI features) are given to the model."""
    uncond: bool
    """Unconditional: no references and the empty prompt for every sample."""


@dataclass(kw_only=True, slots=True)
class ViewDropout:
    """Probabilities of the dropout events (all 0 = no dropout)."""

    p_view: float = 0.0
    """Each present reference view of an identity is dropped with this probability (one is always kept)."""
    p_all_refs: float = 0.0
    """A micro-batch runs without references: text-to-video (decided once for all ranks)."""
    p_uncond: float = 0.0
    """A micro-batch runs without references and with the empty prompt: the unconditional branch of guidance."""
    p_text: float = 0.0
    """A sample's caption is replaced by the empty prompt."""

    def __post_init__(self) -> None:
        for name in PROBABILITIES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is not a probability")
        if self.p_all_refs + self.p_uncond > 1.0:
            raise ValueError(f"p_all_refs + p_uncond = {self.p_all_refs + self.p_uncond} exceeds 1")

    @property
    def uncond_rate(self) -> float:
        """Share of samples trained with neither references nor text: p_uncond + p_all_refs * p_text."""
        return self.p_uncond + self.p_all_refs * self.p_text

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

    def draw_step(self, generator: torch.Generator) -> StepConditions:
        """The conditions of one micro-batch: unconditional, text-to-video or with references (one draw)."""
        u = float(torch.rand((), generator=generator))
        if u < self.p_uncond:
            return StepConditions(refs_on=False, uncond=True)
        return StepConditions(refs_on=u >= self.p_uncond + self.p_all_refs, uncond=False)

    def drop_all_refs(self, generator: torch.Generator) -> bool:
        """True when this micro-batch runs without any reference (text-to-video or unconditional)."""
        return not self.draw_step(generator).refs_on
