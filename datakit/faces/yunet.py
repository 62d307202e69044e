"""YuNet face detector (OpenCV ``FaceDetectorYN``): boxes, 5 landmarks and a score per face."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datakit.faces.base import (
    DETECT_MAX_SIDE,
    SECOND_PASS_SCALE,
    SMALL_FACE_PX,
    Face,
    add_small_faces,
    faces_to_source,
    shrink_for_detection,
)

#: Profile faces score 0.6-0.87 with YuNet; OpenCV's default 0.9 drops every one of them.
YUNET_SCORE_THRESHOLD = 0.6
#: Lowest score reported for tracking (``detect(min_score=...)``): such faces may only extend a live track
#: (datakit.video.tracking). Measured on Lacamoire's Hamilton close-up (frames 20-81): his turned, edge-cut face
#: scores 0.57 at sampled frame 70 and 0.28 at frame 60. 0.5 recovers frame 70 and makes his appearance
#: one track; at 0.4-0.3 the blurred non-face tracks of that shot start taking weaker blob boxes (a 0.40
#: non-face box at frame 80 joins one), and frame 60 only comes at 0.28. Shipped run: 3 low-score rows.
YUNET_LOW_SCORE_THRESHOLD = 0.5


class YuNetDetector:
    """YuNet via ``cv2.FaceDetectorYN`` on the frame shrunk to a long side of at most ``max_side`` px.

    The input size follows each (shrunk) frame's size; boxes and landmarks are mapped back to the source
    frame. ``max_side=0`` runs at full frame size, which on 4K frames gives phantom boxes for large faces.

    ``score_threshold`` is the score of a face (the one a track may start from); ``detect(min_score=...)``
    reports weaker detections too, down to ``min_score``. Non-maximum suppression keeps the higher score, so
    the faces at or above ``score_threshold`` are the same whatever ``min_score`` is.

    YuNet's landmark order (right eye, left eye, nose tip, right and left mouth corner, the subject's
    sides, so the first eye is the one on the image left of a frontal face) is the order of
    :mod:`datakit.faces.base`, so landmarks pass through unchanged.
    """

    name = "yunet-2023mar"
    sees_profiles = True
    #: a track must reach this score once to be a person, and a face to give a reference (datakit.passes.gates):
    #: every face track of the shipped footage peaks at 0.86-0.96; motion-blurred turned heads (the back of
    #: Lacamoire's head) and dark blobs score 0.6-0.7
    confident_score = 0.7

    def __init__(
        self,
        model_path: Path,
        score_threshold: float = YUNET_SCORE_THRESHOLD,
        nms_threshold: float = 0.3,
        max_side: int = DETECT_MAX_SIDE,
    ) -> None:
        self.score_threshold = score_threshold
        self.low_score_threshold = min(YUNET_LOW_SCORE_THRESHOLD, score_threshold)
        self.max_side = max_side
        # OpenCV 5 warns on every create that its new graph engine ignores target selection: noise for users.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._net = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), score_threshold, nms_threshold, 5000)
        finally:
            cv2.utils.logging.setLogLevel(level)
        self._input_size: tuple[int, int] = (320, 320)
        self._net_threshold = score_threshold

    def detect(self, frame_bgr: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Faces in one BGR frame (source pixels) scoring at least ``min_score`` (default: the
        ``score_threshold``), best score first."""
        floor = self.score_threshold if min_score is None else min_score
        if floor != self._net_threshold:
            self._net.setScoreThreshold(floor)
            self._net_threshold = floor
        small, factors = shrink_for_detection(frame_bgr, self.max_side)
        faces = faces_to_source(self._run(small), factors)
        if factors[0] > 1 / SECOND_PASS_SCALE:  # shrunk by more than half: look again for small faces
            long_side = max(frame_bgr.shape[:2])
            half, half_factors = shrink_for_detection(frame_bgr, round(long_side * SECOND_PASS_SCALE))
            second = faces_to_source(self._run(half), half_factors)
            faces = add_small_faces(faces, second, SMALL_FACE_PX * factors[0])
        return faces

    def _run(self, small: np.ndarray) -> list[Face]:
        """YuNet on a frame as given (its own pixels), best score first."""
        height, width = small.shape[:2]
        if (width, height) != self._input_size:
            self._net.setInputSize((width, height))
            self._input_size = (width, height)
        _, rows = self._net.detect(small)
        if rows is None:
            return []
        faces = []
        for row in rows:  # (15,): x, y, w, h, 5 x (x, y), score
            x, y, w, h = (float(v) for v in row[:4])
            faces.append(
                Face(
                    bbox=(x, y, x + w, y + h),
                    det_score=float(row[14]),
                    landmarks=row[4:14].reshape(5, 2).astype(np.float32),
                )
            )
        faces.sort(key=lambda face: -face.det_score)
        return faces
