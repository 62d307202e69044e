"""The per-video choice of candidate crops, from which the global pass later picks reference views
(:mod:`datakit.passes.references`).

For every face with a view bin, :mod:`datakit.video.job` calls :func:`offer_spread`: each track keeps, per
view bin, up to ``crops_per_track_view`` candidate crops that are *spread in time*: the best crop, then the
best one at least ``crop_min_gap_s`` away from every kept one, ... (not the best two neighbouring frames,
which look alike). Crops are JPEG head crops (box grown 1.6x) of long side up to ``crop_max_side`` (512 px,
never upscaled) with the face box inside the crop and a 32x32 gray thumbnail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CropCandidate", "offer_spread"]


@dataclass(slots=True, eq=False)
class CropCandidate:
    """One kept candidate crop of a track in one view bin (per-video stage)."""

    quality: float
    t_s: float
    no: int  # the face's row number in the video's scan
    crop: Any  # datakit.faces.quality.HeadCrop


def offer_spread(
    pool: list[CropCandidate], k: int, min_gap_s: float, quality: float, t_s: float, no: int, make_crop: Callable
) -> None:
    """Offer one face (in time order) to a track's pool of candidate crops for one view bin.

    The pool holds at most ``k`` crops, pairwise at least ``min_gap_s`` apart: a face closer than that to
    a kept crop of at least its quality is dropped; one better than every close crop replaces them; a
    face far from all is added, evicting the worst when the pool is full. ``make_crop()`` (the costly JPEG
    encoding) is called only for a face that enters the pool. Deterministic for a given face order.
    """
    if k <= 0:
        return
    close = [c for c in pool if abs(c.t_s - t_s) < min_gap_s]
    if any(c.quality >= quality for c in close):
        return
    if not close and len(pool) >= k and quality <= min(c.quality for c in pool):
        return
    for c in close:
        pool.remove(c)
    pool.append(CropCandidate(quality, t_s, no, make_crop()))
    if len(pool) > k:
        pool.remove(min(pool, key=lambda c: (c.quality, -c.no)))  # the worst; of equals, the latest
    pool.sort(key=lambda c: c.t_s)
