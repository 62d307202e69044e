"""Track gates: which tracks may become people and give reference crops.

A detector at a profile-friendly threshold also fires on things that are not faces: dark, defocused
blobs in an audience, a logo, a hand. Tracked, each would become an "identity" with "reference crops"
and a trainer conditioned on them learns noise. So every track passes five gates, in this order, on
evidence the per-video stage already stored per face (``faces``: ``det_score``, ``face_px``,
``sharpness``, ``landmarks``). Gates run in the global pass, so changing a threshold re-runs no model
(``datakit build`` on the same ``--out`` with other gate settings re-runs only the global passes).

- ``low_score``: the track's *best* detector score is below the detector's confident score. Every
  track has to be seen clearly at least once; a clip piece made only of weak detections (which may
  extend a track but never start one) is not a person. The default is the detector's own
  ``confident_score`` because score scales differ between detectors.
- ``small``: the track's median face size is below ``gate_min_face_px``: too few pixels to show who
  it is or to give a usable reference.
- ``blurry``: the track's median sharpness (variance of the Laplacian at 112 px, scale-free, see
  :mod:`datakit.faces.quality`) is below ``gate_min_sharpness``. Measured on the Hamilton clip with
  YuNet boxes (each track looked at): dark non-face blobs and the WH.GOV logo 1.0-6.4, defocused but
  real audience faces 5-7, Barack Obama's audience face 17-31, in-focus faces 75-1200 (sharp stills
  140-720). The default 10 drops the blobs and the faces too blurred to be useful references, and
  keeps everything in focus with a margin of ~1.7x below the softest usable face.
- ``implausible_landmarks``: fewer than ``gate_min_landmark_ok`` of the track's faces have a face-like
  5-point layout: every point inside the box grown by 25 %, the mouth below the eyes (an upright head,
  as in footage) and an eye-to-mouth distance of at least 10 % of the box height. YuNet regresses a
  face template even on non-faces, so this gate rarely fires for it; it catches detectors whose
  landmarks fall apart on non-faces.
- ``second_box``: at least ``max_second_box_share`` of the track's faces are a second box on a head that
  another track holds in the same frame (:func:`second_boxes`): the box lies mostly (>= half its area) on
  the other face's box grown upward by 0.6 of its height and sideways by 0.15 of its width (forehead and
  hair), is at most 1.25 times its size, and scored lower. One head shows one face. YuNet puts such boxes
  on hair: on crowd_walk a 59-92 px box sat on the red-haired man's hair above his face box in 6 of 12
  samples (scores 0.53-0.70 against his face's 0.78-0.91; 71-91 % of each box inside his head region),
  tracked on its own and linked as a person with his hair as "reference". A real second face cannot sit
  there without hiding, or being hidden by, the first: a person behind shows a face that is smaller and
  off the head, a person in front a bigger one.

Reference crops are held to the same standard face by face: a face of a kept track can be a reference
only if its own detector score reaches the confident score and its own sharpness the sharpness gate
(:func:`reference_candidates`). A turning head keeps its track through weak, motion-blurred frames (the
back of Alex Lacamoire's head at 0.61-0.65 in the Hamilton close-up), but such a frame is no picture of
the person.

Gates judge *appearances*, not track pieces: the pieces of one appearance that the identity pass joins
across length splits (and a fast mover's steps, :func:`datakit.passes.consolidate.continuity_chains`)
pool their faces' evidence and pass or fail together. A shot cut into 1 s clips is then gated like the
unsplit shot (on crowd_walk at ``max_clip_s`` 1.0 two 1 s pieces of a 38 px face had a median above the
40 px gate and made an identity that the unsplit run drops as ``small``).

A dropped track keeps its faces and its row in ``tracks`` with ``drop_reason`` (the first gate it
failed) and a null ``identity_id``; it is never linked and gives no reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "DROP_REASONS",
    "GateThresholds",
    "apply_gates",
    "landmarks_plausible",
    "reference_candidates",
    "track_evidence",
]

#: Gate names, in the order they are checked; a track's ``drop_reason`` is the first one it fails.
DROP_REASONS = ("low_score", "small", "blurry", "implausible_landmarks", "second_box")

#: the head region of a face box: grown upward by this share of its height (forehead and hair) ...
HEAD_UP = 0.5
#: ... and sideways by this share of its width on each side
HEAD_SIDE = 0.15
#: a second box is at most this many times the size (sqrt of area) of the face whose head it sits on
SECOND_BOX_MAX_SCALE = 1.25


@dataclass(frozen=True, slots=True)
class GateThresholds:
    """The thresholds of the five gates (see the module docstring)."""

    min_best_det_score: float
    min_face_px: float
    min_sharpness: float
    min_landmark_ok: float
    #: a track with at least this share of second boxes on another track's head is dropped (``second_box``)
    max_second_box_share: float = 0.5

    @classmethod
    def resolve(cls, cfg, detector) -> GateThresholds:
        """The config's gate values; ``gate_min_det_score`` None = the detector's ``confident_score``."""
        det = cfg.gate_min_det_score
        if det is None:
            det = detector.confident_score
        return cls(float(det), float(cfg.gate_min_face_px), float(cfg.gate_min_sharpness), cfg.gate_min_landmark_ok)


def landmarks_plausible(bbox: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Per face, whether the 5 landmarks are laid out like a face in its box (see the module docstring).

    ``bbox`` is ``(N, 4)``, ``landmarks`` ``(N, 10)`` (NaN rows = no landmarks: counted as plausible,
    there is no evidence against them).
    """
    pts = landmarks.reshape(-1, 5, 2)
    x0, y0, x1, y1 = (bbox[:, i, None] for i in range(4))
    w, h = np.maximum(x1 - x0, 1e-6), np.maximum(y1 - y0, 1e-6)
    gx, gy = 0.25 * w, 0.25 * h
    inside = (
        (pts[..., 0] >= x0 - gx) & (pts[..., 0] <= x1 + gx) & (pts[..., 1] >= y0 - gy) & (pts[..., 1] <= y1 + gy)
    ).all(axis=1)
    eyes, mouth = pts[:, :2].mean(axis=1), pts[:, 3:].mean(axis=1)
    down = mouth - eyes
    upright = down[:, 1] > 0
    far_enough = np.hypot(down[:, 0], down[:, 1]) >= 0.1 * h[:, 0]
    ok = inside & upright & far_enough
    return ok | np.isnan(pts).any(axis=(1, 2))


def second_boxes(faces: pa.Table) -> np.ndarray:
    """Per face, whether it is a second box on a head another track holds in the same frame (see the module
    docstring). Needs ``video_id``, ``frame_index``, ``track_id``, ``bbox``, ``det_score``."""
    n = faces.num_rows
    out = np.zeros(n, bool)
    if n < 2:
        return out
    video = np.unique(np.asarray(faces.column("video_id").to_pylist(), object), return_inverse=True)[1]
    frame = np.asarray(faces.column("frame_index").to_numpy(zero_copy_only=False), np.int64)
    order = np.lexsort((frame, video))
    key = np.stack([video[order], frame[order]], 1)
    # faces of one frame are neighbours in ``order``: every pair (i, j) of one frame, i before j
    new = np.r_[True, (key[1:] != key[:-1]).any(1)]
    start = np.flatnonzero(new)
    size = np.diff(np.r_[start, n])
    group_start = np.repeat(start, size)
    later = group_start + np.repeat(size, size) - np.arange(n) - 1  # faces after each one in its frame
    if later.sum() == 0:
        return out
    first = np.repeat(np.arange(n), later)
    second = first + 1 + np.arange(later.sum()) - np.repeat(np.cumsum(later) - later, later)
    a, b = order[first], order[second]
    track = np.unique(np.asarray(faces.column("track_id").to_pylist(), object), return_inverse=True)[1]
    other = track[a] != track[b]
    a, b = a[other], b[other]
    box = np.asarray(faces.column("bbox").combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float64)
    box = box.reshape(n, 4)
    score = np.asarray(faces.column("det_score").to_numpy(zero_copy_only=False), np.float64)
    for host, guest in ((a, b), (b, a)):
        out[guest[_on_head(box[guest], box[host]) & (score[guest] < score[host])]] = True
    return out


def _on_head(guest: np.ndarray, host: np.ndarray) -> np.ndarray:
    """Whether each ``guest`` box lies mostly on the head region of its ``host`` box (rows of ``(k, 4)``)."""
    w, h = host[:, 2] - host[:, 0], host[:, 3] - host[:, 1]
    head = np.stack([host[:, 0] - HEAD_SIDE * w, host[:, 1] - HEAD_UP * h, host[:, 2] + HEAD_SIDE * w, host[:, 3]], 1)
    ix = np.clip(np.minimum(guest[:, 2], head[:, 2]) - np.maximum(guest[:, 0], head[:, 0]), 0, None)
    iy = np.clip(np.minimum(guest[:, 3], head[:, 3]) - np.maximum(guest[:, 1], head[:, 1]), 0, None)
    area = np.maximum((guest[:, 2] - guest[:, 0]) * (guest[:, 3] - guest[:, 1]), 1e-6)
    small_enough = area <= SECOND_BOX_MAX_SCALE**2 * np.maximum(w * h, 1e-6)
    return (ix * iy >= 0.5 * area) & small_enough


def track_evidence(faces: pa.Table, second: np.ndarray | None = None) -> pa.Table:
    """Per ``track_id``: ``best_det_score``, ``median_face_px``, ``median_sharpness``, ``landmark_ok``
    (share of faces with plausible landmarks), ``second_box`` (share of second boxes on another's head;
    ``second``: the per-face flags of :func:`second_boxes` when the caller has them)."""
    n = faces.num_rows
    if n == 0:
        return pa.table({"track_id": pa.array([], pa.string())})
    bbox = np.asarray(faces.column("bbox").combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float64)
    lm_col = faces.column("landmarks").combine_chunks()
    lm = np.full((n, 10), np.nan)
    valid = np.asarray(lm_col.is_valid().to_numpy(zero_copy_only=False), bool)
    if valid.any():
        lm[valid] = np.asarray(lm_col.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)).reshape(-1, 10)
    ok = landmarks_plausible(bbox.reshape(n, 4), lm)
    per_face = pa.table(
        {
            "track_id": faces.column("track_id"),
            "det_score": faces.column("det_score"),
            "face_px": faces.column("face_px"),
            "sharpness": faces.column("sharpness"),
            "landmark_ok": pa.array(ok.astype(np.float32)),
            "second_box": pa.array((second_boxes(faces) if second is None else second).astype(np.float32)),
        }
    )
    agg = per_face.group_by("track_id").aggregate(
        [
            ("det_score", "max"),
            ("face_px", "approximate_median"),
            ("sharpness", "approximate_median"),
            ("landmark_ok", "mean"),
            ("second_box", "mean"),
        ]
    )
    names = {
        "det_score_max": "best_det_score",
        "face_px_approximate_median": "median_face_px",
        "sharpness_approximate_median": "median_sharpness",
        "landmark_ok_mean": "landmark_ok",
        "second_box_mean": "second_box",
    }
    return agg.rename_columns([names.get(name, name) for name in agg.column_names])


def apply_gates(
    tracks: pa.Table, faces: pa.Table, gates: GateThresholds, chains: dict[str, str] | None = None
) -> pa.Table:
    """``tracks`` with ``drop_reason`` set (null = kept) from the evidence of their ``faces``.

    ``chains`` (track id -> chain id, :func:`datakit.passes.consolidate.continuity_chains`): the evidence is
    pooled per chain, so the pieces of one appearance pass or fail together, however the shot was cut."""
    if chains:
        second = second_boxes(faces)  # per frame, before the faces are relabelled by chain
        chain_of = pc.cast(faces.column("track_id"), pa.string()).to_pylist()
        faces = faces.set_column(
            faces.schema.get_field_index("track_id"), "track_id", pa.array([chains.get(t, t) for t in chain_of])
        )
        ev = track_evidence(faces, second)
        chain_ids = [chains.get(t, t) for t in tracks.column("track_id").to_pylist()]
        ids = pa.array(chain_ids, pa.string())
    else:
        ev = track_evidence(faces)
        ids = tracks.column("track_id")
    if ev.num_rows:
        idx = pc.index_in(ids, value_set=ev.column("track_id"))
        evidence = {name: pc.take(ev.column(name), idx) for name in ev.column_names if name != "track_id"}
    else:
        evidence = {}

    def column(name: str) -> np.ndarray:
        if name not in evidence:  # a track without faces: no evidence for it at all
            return np.full(tracks.num_rows, np.nan)
        return np.asarray(evidence[name].to_numpy(zero_copy_only=False), np.float64)

    failed = [
        column("best_det_score") < gates.min_best_det_score,
        column("median_face_px") < gates.min_face_px,
        column("median_sharpness") < gates.min_sharpness,
        column("landmark_ok") < gates.min_landmark_ok,
        column("second_box") >= gates.max_second_box_share,
    ]
    no_faces = np.isnan(column("best_det_score"))
    reasons = np.full(tracks.num_rows, None, object)
    for reason, fails in zip(reversed(DROP_REASONS), reversed(failed), strict=True):  # first gate wins
        reasons[fails] = reason
    reasons[no_faces] = "low_score"
    column_ = pa.array(reasons.tolist(), pa.string())
    at = tracks.schema.get_field_index("drop_reason")
    return tracks.append_column("drop_reason", column_) if at < 0 else tracks.set_column(at, "drop_reason", column_)


def reference_candidates(faces: pa.Table, gates: GateThresholds) -> pa.Table:
    """The faces that may give a reference crop: confidently detected and sharp, each on its own."""
    det_ok = pc.greater_equal(faces.column("det_score"), gates.min_best_det_score)
    sharp_ok = pc.greater_equal(faces.column("sharpness"), gates.min_sharpness)
    return faces.filter(pc.and_(det_ok, sharp_ok))
