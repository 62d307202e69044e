"""The pip-only fallback: dlib's HOG frontal detector and head pose from its 68 landmarks.

Everything here ships in PyPI wheels (dlib-bin, face-recognition-models). The HOG detector was trained on
frontal faces: it does not find profiles, so a run on this stack has no ``*_profile`` views.
"""

from __future__ import annotations

import math

import cv2
import dlib
import numpy as np

from datakit.faces.base import DETECT_MAX_SIDE, Face, shrink_for_detection
from datakit.faces.dlib_embed import to_dlib_rect
from datakit.faces.model_files import dlib_model_path

#: HOG's sliding window is 80x80 px; one 2x upsampling finds faces down to ~40 px. Frames larger than this
#: (long side, px, judged on the source frame) are not upsampled: their faces are large and 4x the pixels
#: costs seconds a frame.
HOG_UPSAMPLE_MAX_SIDE = 1024
#: det_score = sigmoid(HOG_SCORE_SLOPE * svm_margin): the detector's own threshold (margin 0) maps to 0.5,
#: a clear frontal face (margin ~1.5-3) to 0.95-1.
HOG_SCORE_SLOPE = 2.0
#: Lowest score reported for tracking (``detect(min_score=...)``; SVM margin -0.2): such faces may only
#: extend a live track (datakit.video.tracking). Provisional, not calibrated on footage: HOG misses turned faces
#: outright rather than scoring them low, so a small step below the detector's own threshold is enough.
HOG_LOW_SCORE_THRESHOLD = 0.4

# A generic adult head, in mm, in camera-like axes: x to the image right, y down, z away from the camera
# (a frontal face has the identity rotation). Our own rough anthropometric averages, keyed by dlib's
# 68-point index (iBUG 300-W scheme); the nose tip is the origin.
_MODEL_POINTS_MM = {
    30: (0.0, 0.0, 0.0),  # nose tip
    27: (0.0, -44.0, 24.0),  # nose bridge, between the eyes
    33: (0.0, 14.0, 14.0),  # below the nose (subnasale)
    8: (0.0, 72.0, 22.0),  # chin
    36: (-44.0, -36.0, 36.0),  # subject's right eye, outer corner (image left)
    39: (-15.0, -35.0, 30.0),  # subject's right eye, inner corner
    42: (15.0, -35.0, 30.0),  # subject's left eye, inner corner
    45: (44.0, -36.0, 36.0),  # subject's left eye, outer corner (image right)
    48: (-25.0, 32.0, 28.0),  # mouth corner, subject's right
    54: (25.0, 32.0, 28.0),  # mouth corner, subject's left
    0: (-70.0, -30.0, 100.0),  # jaw line at the right ear
    16: (70.0, -30.0, 100.0),  # jaw line at the left ear
}
_PNP_INDICES = list(_MODEL_POINTS_MM)
_PNP_MODEL = np.array([_MODEL_POINTS_MM[i] for i in _PNP_INDICES], np.float64)  # (12, 3)


def landmarks5_from_68(points68: np.ndarray) -> np.ndarray:
    """Our 5 points (right eye, left eye, nose tip, right and left mouth corner) from dlib's 68."""
    return np.stack(
        [
            points68[36:42].mean(axis=0),  # subject's right eye (image left)
            points68[42:48].mean(axis=0),  # subject's left eye
            points68[30],  # nose tip
            points68[48],  # subject's right mouth corner
            points68[54],  # subject's left mouth corner
        ]
    ).astype(np.float32)


def pose_from_68(points68: np.ndarray, frame_shape: tuple[int, ...]) -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) in degrees in our convention, by PnP of 68 landmarks against the generic head.

    The camera is a pinhole with focal length = frame width and the principal point at the centre. The
    signs follow from the geometry (tested on synthetic projections) and agree with FSA-Net on real faces;
    the generic head's depths bias pitch: frontal stills read about -15 to -20 deg (looking down).
    """
    height, width = frame_shape[:2]
    camera = np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], np.float64)
    image_points = points68[_PNP_INDICES].astype(np.float64)  # (12, 2)
    ok, rvec, tvec = cv2.solvePnP(_PNP_MODEL, image_points, camera, None, flags=cv2.SOLVEPNP_EPNP)
    if not ok:
        return None
    ok, rvec, tvec = cv2.solvePnP(
        _PNP_MODEL, image_points, camera, None, rvec, tvec, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE
    )
    if not ok:
        return None
    rotation, _ = cv2.Rodrigues(rvec)
    # The face looks along -z of the model; in the camera that is d = -R[:, 2] (x right, y down, z away).
    facing = -rotation[:, 2]
    yaw = math.degrees(math.atan2(-facing[0], -facing[2]))  # > 0: points to the image left
    pitch = math.degrees(math.atan2(-facing[1], math.hypot(facing[0], facing[2])))  # > 0: looks up
    up = -rotation[:, 1]  # the head's up direction in the image
    roll = math.degrees(math.atan2(up[0], -up[1]))  # > 0: the top of the head turns clockwise
    return yaw, pitch, roll


class HogDetector:
    """dlib's HOG + linear SVM frontal face detector, with 5 landmarks from the 68-point predictor.

    HOG scans the frame shrunk to a long side of at most ``max_side`` px (0: full size); the 68 landmarks
    are predicted on the full-resolution frame inside the box mapped back to it. ``det_threshold`` is the
    score of a face; ``detect(min_score=...)`` reports weaker detections too, for tracking.
    """

    name = "dlib-hog"
    sees_profiles = False
    confident_score = 0.5  #: SVM margin 0, HOG's own decision boundary (see datakit.passes.gates)

    def __init__(
        self, det_threshold: float = 0.5, upsample: int | None = None, max_side: int = DETECT_MAX_SIDE
    ) -> None:
        self._detector = dlib.get_frontal_face_detector()
        self._shape68 = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
        self.score_threshold = min(max(det_threshold, 1e-3), 1 - 1e-3)
        self.low_score_threshold = min(HOG_LOW_SCORE_THRESHOLD, self.score_threshold)
        self.upsample = upsample
        self.max_side = max_side

    def detect(self, frame_bgr: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Faces in one BGR frame scoring at least ``min_score`` (default: ``score_threshold``), best score
        first; ``extra["landmarks68"]`` holds the 68 points."""
        floor = min(max(self.score_threshold if min_score is None else min_score, 1e-3), 1 - 1e-3)
        adjust_threshold = math.log(floor / (1 - floor)) / HOG_SCORE_SLOPE  # the SVM margin whose sigmoid is floor
        upsample = self.upsample
        if upsample is None:
            upsample = 1 if max(frame_bgr.shape[:2]) <= HOG_UPSAMPLE_MAX_SIDE else 0
        small, (fx, fy) = shrink_for_detection(frame_bgr, self.max_side)
        small_rgb = np.ascontiguousarray(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
        rects, margins, _ = self._detector.run(small_rgb, upsample, adjust_threshold)
        rgb = small_rgb if small is frame_bgr else None
        faces = []
        for rect, margin in zip(rects, margins, strict=True):
            if rgb is None:
                rgb = np.ascontiguousarray(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
            box = (rect.left() * fx, rect.top() * fy, (rect.right() + 1.0) * fx, (rect.bottom() + 1.0) * fy)
            shape = self._shape68(rgb, to_dlib_rect(box))
            points68 = np.array([(p.x, p.y) for p in shape.parts()], np.float32)  # (68, 2)
            faces.append(
                Face(
                    bbox=box,
                    det_score=1.0 / (1.0 + math.exp(-HOG_SCORE_SLOPE * margin)),
                    landmarks=landmarks5_from_68(points68),
                    extra={"landmarks68": points68},
                )
            )
        faces.sort(key=lambda face: -face.det_score)
        return faces


class Landmark68Pose:
    """Head pose by PnP from 68 landmarks: the detector's (``extra["landmarks68"]``) or dlib's predictor."""

    name = "dlib68-pnp"

    def __init__(self) -> None:
        self._shape68: dlib.shape_predictor | None = None

    def landmarks68(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray:
        """The face's 68 points, predicted by dlib when the detector did not give them."""
        points = face.extra.get("landmarks68")
        if points is None:
            if self._shape68 is None:
                self._shape68 = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
            rgb = np.ascontiguousarray(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
            shape = self._shape68(rgb, to_dlib_rect(face.bbox))
            points = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
            face.extra["landmarks68"] = points
        return np.asarray(points)[:, :2]

    def estimate(self, frame_bgr: np.ndarray, faces: list[Face]) -> None:
        """Fill yaw/pitch/roll of ``faces`` in place (None when PnP fails)."""
        for face in faces:
            angles = pose_from_68(self.landmarks68(frame_bgr, face), frame_bgr.shape)
            if angles is not None:
                face.yaw_deg, face.pitch_deg, face.roll_deg = angles
