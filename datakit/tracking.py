"""Online face tracking within a shot: greedy IoU matching between consecutive sampled frames.

At a few frames per second a face moves little between samples, so box overlap is a reliable,
model-free link; a cut (new shot) or a gap longer than ``max_gap_s`` ends every track. Identity
embeddings then join tracks of the same person across shots and videos (datakit.identities).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(slots=True)
class _Active:
    key: int
    bbox: tuple[float, ...]
    last_t: float


@dataclass(slots=True)
class IouTracker:
    """Assigns each detection a track key; keys are dense integers in order of track birth."""

    min_iou: float = 0.3
    max_gap_s: float = 1.0
    _active: list[_Active] = field(default_factory=list)
    _next_key: int = 0

    def cut(self) -> None:
        """A new shot started: no track continues across it."""
        self._active.clear()

    def update(self, t_s: float, boxes: list[tuple[float, ...]]) -> list[int]:
        """Match this frame's boxes to live tracks; returns one track key per box."""
        self._active = [a for a in self._active if t_s - a.last_t <= self.max_gap_s]
        keys = [-1] * len(boxes)
        if self._active and boxes:
            scores = np.array([[iou(a.bbox, b) for b in boxes] for a in self._active])
            # Greedy on the best remaining overlap: optimal enough for the few faces of a frame.
            for flat in np.argsort(-scores, axis=None):
                i, j = divmod(int(flat), len(boxes))
                if scores[i, j] < self.min_iou:
                    break
                if keys[j] == -1 and self._active[i].last_t != t_s:
                    keys[j] = self._active[i].key
                    self._active[i].bbox, self._active[i].last_t = boxes[j], t_s
        for j, box in enumerate(boxes):
            if keys[j] == -1:
                keys[j] = self._next_key
                self._active.append(_Active(self._next_key, box, t_s))
                self._next_key += 1
        return keys
