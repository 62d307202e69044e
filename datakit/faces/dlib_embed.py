"""dlib's ResNet identity embedder (128-d), aligned with dlib's 5-point shape predictor."""

from __future__ import annotations

import cv2
import dlib
import numpy as np

from datakit.faces.base import Face
from datakit.faces.model_files import dlib_model_path

#: dlib's documented operating point is a Euclidean distance of 0.6 between raw descriptors (99.38% on LFW).
#: The raw descriptors are not unit length (norms 1.37-1.52, median ~1.4 on the stills), so d = 0.6 maps to
#: cosine 1 - 0.36 / (2 * 1.4^2) = 0.91. Measured here instead (benchmarks/calibrate_embedders.py, 2026-12-01:
#: 395 labelled real faces of 13 people from the stills and the shipped videos, YuNet boxes, faces >= 80 px and
#: |yaw| <= 45 deg, track-level quality-weighted means as the linker sees them): same person across sources
#: 0.945-0.99 (5% 0.949), different people up to 0.913 (the foreman vs Lin-Manuel Miranda, 95% 0.895).
#: 0.91 sat below that pair; 0.93 is the middle of the gap (0.913 .. 0.945).
DLIB_SAME_PERSON_COSINE = 0.93


def to_dlib_rect(bbox: tuple[float, float, float, float]) -> dlib.rectangle:
    """A dlib rectangle (inclusive integer corners) for a float box."""
    x0, y0, x1, y1 = bbox
    return dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)


class DlibEmbedder:
    """dlib ``face_recognition_model_v1`` on 150x150 chips cut by ``dlib.get_face_chip``.

    The 5-point shape predictor runs on the detector's box; the chip is RGB (dlib's networks take RGB).
    """

    name = "dlib-resnet-v1"
    dim = 128
    same_person_cosine = DLIB_SAME_PERSON_COSINE
    #: smaller faces are not embedded: chips upsampled from small faces collapse towards one "blurry face"
    #: (calibration: with faces of 24-80 px admitted, different people reach 0.948, above every threshold
    #: that keeps the same person together)
    min_embed_px = 80.0
    #: beyond it dlib's frontal-trained ResNet embeds profiles poorly (calibration: at 60-75 deg different
    #: people reach 0.96 and the same person falls to 0.84)
    max_embed_yaw_deg = 45.0

    def __init__(self) -> None:
        self._shape5 = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))
        self._net = dlib.face_recognition_model_v1(str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))

    def chip(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray:
        """The aligned 150x150 RGB chip of one face."""
        rgb = np.ascontiguousarray(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
        shape = self._shape5(rgb, to_dlib_rect(face.bbox))
        return dlib.get_face_chip(rgb, shape, size=150, padding=0.25)

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        """(N, 128) float32 unit-length descriptors of a batch of chips."""
        if not chips:
            return np.zeros((0, self.dim), np.float32)
        vectors = self._net.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        descriptors = np.asarray([np.asarray(v) for v in vectors], np.float32)  # (N, 128)
        return descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
