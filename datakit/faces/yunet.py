"""YuNet face detector (OpenCV ``FaceDetectorYN``): boxes, 5 landmarks and a score per face."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datakit.faces.base import Face

#: Profile faces score 0.6-0.87 with YuNet; OpenCV's default 0.9 drops every one of them.
YUNET_SCORE_THRESHOLD = 0.6


class YuNetDetector:
    """YuNet via ``cv2.FaceDetectorYN``; the input size follows each frame's size.

    YuNet's landmark order (right eye, left eye, nose tip, right and left mouth corner, the subject's
    sides, so the first eye is the one on the image left of a frontal face) is the order of
    :mod:`datakit.faces.base`, so landmarks pass through unchanged.
    """

    name = "yunet-2023mar"
    sees_profiles = True

    def __init__(
        self, model_path: Path, score_threshold: float = YUNET_SCORE_THRESHOLD, nms_threshold: float = 0.3
    ) -> None:
        self.score_threshold = score_threshold
        # OpenCV 5 warns on every create that its new graph engine ignores target selection: noise for users.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._net = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), score_threshold, nms_threshold, 5000)
        finally:
            cv2.utils.logging.setLogLevel(level)
        self._input_size: tuple[int, int] = (320, 320)

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """Faces in one BGR frame, best score first."""
        height, width = frame_bgr.shape[:2]
        if (width, height) != self._input_size:
            self._net.setInputSize((width, height))
            self._input_size = (width, height)
        _, rows = self._net.detect(frame_bgr)
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
