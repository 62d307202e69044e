"""Track gates: which tracks may become people and give reference crops.

A detector at a profile-friendly threshold also fires on things that are not faces: dark, defocused
blobs in an audience, a logo, a hand. Tracked, each would become an "identity" with "reference crops"
and a trainer conditioned on them learns noise. So every track passes four gates, in this order, on
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

Reference crops are held to the same standard face by face: a face of a kept track can be a reference
only if its own detector score reaches the confident score and its own sharpness the sharpness gate
(:func:`reference_candidates`). A turning head keeps its track through weak, motion-blurred frames (the
back of Alex Lacamoire's head at 0.61-0.65 in the Hamilton close-up), but such a frame is no picture of
the person.

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
DROP_REASONS = ("low_score", "small", "blurry", "implausible_landmarks")


@dataclass(frozen=True, slots=True)
class GateThresholds:
    """The thresholds of the four gates (see the module docstring)."""

    min_best_det_score: float
    min_face_px: float
    min_sharpness: float
    min_landmark_ok: float

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


def track_evidence(faces: pa.Table) -> pa.Table:
    """Per ``track_id``: ``best_det_score``, ``median_face_px``, ``median_sharpness``, ``landmark_ok``
    (share of faces with plausible landmarks)."""
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
        }
    )
    agg = per_face.group_by("track_id").aggregate(
        [
            ("det_score", "max"),
            ("face_px", "approximate_median"),
            ("sharpness", "approximate_median"),
            ("landmark_ok", "mean"),
        ]
    )
    names = {
        "det_score_max": "best_det_score",
        "face_px_approximate_median": "median_face_px",
        "sharpness_approximate_median": "median_sharpness",
        "landmark_ok_mean": "landmark_ok",
    }
    return agg.rename_columns([names.get(name, name) for name in agg.column_names])


def apply_gates(tracks: pa.Table, faces: pa.Table, gates: GateThresholds) -> pa.Table:
    """``tracks`` with ``drop_reason`` set (null = kept) from the evidence of their ``faces``."""
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
