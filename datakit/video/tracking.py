"""Online face tracking within a shot: two-stage (high then low score) association of motion-predicted boxes.

At a few frames per second a head that turns, nods or leaves the frame edge moves a lot between two
samples (Lacamoire's Hamilton close-up: his face centre moves 0.7-1.1 face sizes between samples, the
box overlap of consecutive samples is often below 0.3), and the detector's score drops for a turned or
cut face (the same face scores 0.87 frontal-ish, 0.28-0.57 half out of the frame). Box IoU alone
therefore splits one continuous appearance into several tracks. The method, in the spirit of SORT and
ByteTrack (our own, simpler code):

- **Motion**: each track keeps its last box and a constant-velocity estimate of its centre and log size.
  A detection is compared with two hypotheses, the last box (the head stopped or turned back) and the
  box predicted for this time (the head keeps moving); the better one counts. At 3 fps neither
  hypothesis alone is reliable for heads.
- **Gates and cost**: a pair may link when the boxes overlap (IoU >= ``min_iou``), or when the centre
  moved at most ``max_shift`` face sizes (scaled by the square root of the number of sampling steps
  elapsed: jittery head motion grows like a random walk, not linearly) *and* the face size changed by at
  most a factor ``max_scale``. The scale gate keeps a small blurred blob from being glued onto a large
  close-up face next to it. A box touching the frame edge is cut: its visible size is only a lower bound
  of the face's, so for it the scale gate is one-sided (the other face may be bigger, not much smaller)
  and the shift is measured in the larger of the two sizes.
- **Two stages** (ByteTrack): detections scoring at least ``start_score`` are associated first; live
  tracks left unmatched then take the low-score detections (between the detector's low threshold and
  ``start_score``). A low-score detection only *extends* a track: unmatched, it is discarded (``None``),
  never a new track, so lowering the detector's threshold adds no junk tracks.
- **Assignment**, in two rounds. First the least total cost (``scipy.optimize.linear_sum_assignment``)
  over the pairs that pass the gates, where leaving a track or a detection unmatched costs ``MISS_COST``
  (0.75) each: a pair is made only when it beats leaving both out (cost <= 1.5 of the 2 at the gates).
  Then the pairs within the gates that are left, cheapest first. Greedy lowest-cost-first matching alone
  switched identities where people pass: on crowd_walk (ArcFace pack) the boy's track, predicted to keep
  moving right, took the face of the man beside him (cost 0.25; the man's own track 0.92, the boy's face
  to the boy's track 0.5), so the boy's face went to a passer-by's track (1.33) and the man's track lost
  a frame; the first round keeps all three (2.17 against 2.33). Maximising the number of pairs instead
  glued the red-haired man's face to a background man's track two samples old (1.61, its predicted box
  grown from 41 to 62 px) so that his own track could take the box on his hair: the miss cost keeps
  such marginal pairs out of the first round.

A cut (new shot) or a gap longer than ``max_gap_s`` ends every track. Identity embeddings then join
tracks of the same person across shots and videos (datakit.passes.identities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:
    from datakit.config import BuildConfig
    from datakit.faces.base import Detector

#: a box closer than this (px) to the frame border is treated as cut by it
EDGE_PX = 2.0
#: the cost of leaving a track or a detection unmatched in the first assignment round (pair costs run to 2
#: at the gates: the shift and scale terms are each 1 there); pairs costing more wait for the second round
MISS_COST = 0.75


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre_size(box: tuple[float, ...]) -> tuple[float, float, float]:
    """(cx, cy, size) with size = sqrt of the box area (the ``face_px`` of the pipeline)."""
    w, h = max(box[2] - box[0], 1e-6), max(box[3] - box[1], 1e-6)
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, math.sqrt(w * h)


def _box(cx: float, cy: float, size: float, aspect: float) -> tuple[float, float, float, float]:
    """The box of centre (cx, cy), area size**2 and width/height ratio ``aspect``."""
    w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def touches_edge(box: tuple[float, ...], frame_size: tuple[int, int] | None) -> bool:
    """Whether the box reaches the border of a ``(width, height)`` frame (the face is partly out of it)."""
    if frame_size is None:
        return False
    width, height = frame_size
    return box[0] <= EDGE_PX or box[1] <= EDGE_PX or box[2] >= width - EDGE_PX or box[3] >= height - EDGE_PX


@dataclass(slots=True)
class _Track:
    key: int
    bbox: tuple[float, ...]
    last_t: float
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)  # d(cx)/dt, d(cy)/dt (px/s), d(log size)/dt

    def predicted(self, t_s: float) -> tuple[float, ...]:
        """The box extrapolated to ``t_s`` at constant velocity of centre and log size."""
        cx, cy, size = _centre_size(self.bbox)
        dt = t_s - self.last_t
        aspect = (self.bbox[2] - self.bbox[0]) / max(self.bbox[3] - self.bbox[1], 1e-6)
        vx, vy, vs = self.velocity
        return _box(cx + vx * dt, cy + vy * dt, size * math.exp(vs * dt), max(aspect, 1e-3))

    def move_to(self, box: tuple[float, ...], t_s: float) -> None:
        """Continue the track with ``box`` at ``t_s`` and update its velocity estimate."""
        dt = t_s - self.last_t
        if dt > 0:
            (ax, ay, asz), (bx, by, bsz) = _centre_size(self.bbox), _centre_size(box)
            self.velocity = ((bx - ax) / dt, (by - ay) / dt, math.log(bsz / asz) / dt)
        self.bbox, self.last_t = tuple(box), t_s


@dataclass(slots=True)
class FaceTracker:
    """Assigns each detection a track key; keys are dense integers in order of track birth.

    ``update`` returns ``None`` for a low-score detection (``score < start_score``) that extended no
    track: the caller drops it. Without scores every detection may start a track.
    """

    start_score: float = 0.0  #: detections scoring at least this may start a track; lower ones only extend
    low_score: float = 0.0  #: the detector is asked for detections down to this score (see ``from_config``)
    min_iou: float = 0.3  #: boxes overlapping this much always pass the gates
    max_shift: float = 1.5  #: largest centre move per sampling step, in face sizes
    max_scale: float = 1.6  #: largest face-size change factor between two linked boxes
    step_s: float = 1.0 / 3.0  #: the sampling interval the shift gate is stated for
    max_gap_s: float = 1.0  #: a track ends after this long without a matching detection
    _active: list[_Track] = field(default_factory=list)
    _next_key: int = 0

    @classmethod
    def from_config(cls, cfg: BuildConfig, detector: Detector) -> FaceTracker:
        """The tracker of a build: the one place that decides which scores start and which only extend.

        A track starts from the detector's own face threshold (``det_threshold`` or the backend default);
        the low threshold is ``cfg.track_low_score`` or the detector's ``low_score_threshold``.
        """
        start = float(detector.score_threshold)
        low = detector.low_score_threshold if cfg.track_low_score is None else cfg.track_low_score
        return cls(
            start_score=start,
            low_score=min(float(low), start),
            min_iou=cfg.track_iou,
            max_shift=cfg.track_max_shift,
            max_scale=cfg.track_max_scale,
            step_s=1.0 / cfg.sample_fps,
            max_gap_s=cfg.track_max_gap_s,
        )

    def cut(self) -> None:
        """A new shot started: no track continues across it."""
        self._active.clear()

    def pair_cost(
        self, track: _Track, box: tuple[float, ...], t_s: float, frame_size: tuple[int, int] | None = None
    ) -> float | None:
        """Cost of continuing ``track`` with ``box`` at ``t_s`` (lower is better), or None when gated out."""
        steps = max(1.0, (t_s - track.last_t) / self.step_s)
        allowed = self.max_shift * math.sqrt(steps)
        box_cut = touches_edge(box, frame_size)
        bx, by, bsize = _centre_size(box)
        best = None
        for ref in (track.bbox, track.predicted(t_s)):
            rx, ry, rsize = _centre_size(ref)
            ref_cut = touches_edge(ref, frame_size)
            change = math.log(bsize / rsize)
            if box_cut and ref_cut:  # both visible sizes are lower bounds: nothing to compare
                change = 0.0
            elif box_cut:  # the new face is at least as big as its visible part: it may look smaller
                change = max(change, 0.0)
            elif ref_cut:  # the tracked face was at least as big as its visible part: it may look bigger now
                change = min(change, 0.0)
            scale = abs(change) / math.log(self.max_scale)
            norm = max(rsize, bsize) if (box_cut or ref_cut) else math.sqrt(rsize * bsize)
            shift = math.hypot(bx - rx, by - ry) / norm / allowed
            if (shift <= 1.0 and scale <= 1.0) or iou(ref, box) >= self.min_iou:
                cost = shift + scale
                best = cost if best is None else min(best, cost)
        return best

    def update(
        self,
        t_s: float,
        boxes: list[tuple[float, ...]],
        scores: list[float] | None = None,
        frame_size: tuple[int, int] | None = None,
    ) -> list[int | None]:
        """Match this frame's boxes to live tracks; one track key per box, None for a dropped low-score box.

        ``frame_size`` is ``(width, height)``: boxes at its border are treated as partly out of frame.
        """
        self._active = [a for a in self._active if t_s - a.last_t <= self.max_gap_s]
        scores = [1.0] * len(boxes) if scores is None else list(scores)
        keys: list[int | None] = [None] * len(boxes)
        high = [j for j, s in enumerate(scores) if s >= self.start_score]
        low = [j for j, s in enumerate(scores) if s < self.start_score]
        free = list(range(len(self._active)))
        for group in (high, low):
            free = self._associate(t_s, boxes, group, free, keys, frame_size)
        for j in high:
            if keys[j] is None:
                keys[j] = self._next_key
                self._active.append(_Track(self._next_key, tuple(boxes[j]), t_s))
                self._next_key += 1
        return keys

    def _associate(self, t_s, boxes, group, free, keys, frame_size) -> list[int]:
        """Match detections ``group`` to tracks ``free`` (see the module docstring); returns the tracks still
        free."""
        rows = [i for i in free if self._active[i].last_t < t_s]  # not already continued at this time
        cols = [j for j in group if keys[j] is None]
        if not rows or not cols:
            return free
        cost = np.full((len(rows), len(cols)), np.inf)
        for a, i in enumerate(rows):
            for b, j in enumerate(cols):
                c = self.pair_cost(self._active[i], boxes[j], t_s, frame_size)
                if c is not None:
                    cost[a, b] = c
        pairs = _assign(cost, MISS_COST)
        # Pairs within the gates that the first round left (a track or a face no one else wanted): cheapest first.
        left = [(cost[a, b], a, b) for a in range(len(rows)) for b in range(len(cols)) if np.isfinite(cost[a, b])]
        used_a, used_b = {a for a, _ in pairs}, {b for _, b in pairs}
        for _, a, b in sorted(left):
            if a not in used_a and b not in used_b:
                pairs.append((a, b))
                used_a.add(a)
                used_b.add(b)
        taken_tracks: set[int] = set()
        for a, b in pairs:
            i, j = rows[a], cols[b]
            taken_tracks.add(i)
            keys[j] = self._active[i].key
            self._active[i].move_to(boxes[j], t_s)
        return [i for i in free if i not in taken_tracks]


def _assign(cost: np.ndarray, miss: float) -> list[tuple[int, int]]:
    """Least-total-cost pairs of a ``(tracks, detections)`` cost matrix (inf = gated out), where leaving a
    track or a detection unmatched costs ``miss``: a pair costing more than ``2 * miss`` is never made
    (the matrix is padded with one "unmatched" slot per track and per detection)."""
    n, m = cost.shape
    big = 1e6
    full = np.full((n + m, m + n), big)
    full[:n, :m] = np.where(np.isfinite(cost), cost, big)
    full[:n, m:] = np.where(np.eye(n, dtype=bool), miss, big)  # track a unmatched
    full[n:, :m] = np.where(np.eye(m, dtype=bool), miss, big)  # detection b unmatched
    full[n:, m:] = 0.0  # the two "unmatched" slots of nothing
    rows, cols = linear_sum_assignment(full)
    return [(a, b) for a, b in zip(rows.tolist(), cols.tolist(), strict=True) if a < n and b < m and full[a, b] < big]


#: the former name, when only box overlap linked faces
IouTracker = FaceTracker
