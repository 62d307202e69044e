"""dlib's ResNet identity embedder (128-d), aligned with dlib's 5-point shape predictor."""

from __future__ import annotations

import cv2
import dlib
import numpy as np

from datakit.faces.base import Face
from datakit.faces.model_files import dlib_model_path

#: dlib's documented operating point: two faces are the same person when the Euclidean distance of their
#: raw descriptors is below 0.6 (dlib's face_recognition.py example and the model's release notes, 99.38%
#: on LFW). The raw descriptors are NOT unit length: their norms measured 1.37-1.52 (median ~1.4) on the
#: stills, so d = 0.6 maps to cosine = 1 - d^2 / (2 |v|^2) = 1 - 0.36 / (2 * 1.4^2) = 0.91, not the
#: 1 - d^2 / 2 = 0.82 that unit vectors would give (0.82 would call Obama and Biden the same: 0.81-0.82).
#: Measured on the stills with YuNet boxes (cosine of the normalised vectors): same person 0.948-0.999
#: (obama / obama2 / obama3 / two_people / obama_and_biden, biden / biden2 / ...), different people
#: 0.80-0.89 (Obama vs Biden 0.80-0.83; Lin-Manuel Miranda vs Obama or Alex Lacamoire up to 0.89).
DLIB_SAME_PERSON_COSINE = 0.91


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
    #: smaller faces are not embedded: chips upsampled from tiny faces collapse towards one "blurry face"
    #: (measured: different people of 50-67 px at cosine 0.93-0.96, above the 0.91 operating point)
    min_embed_px = 80.0
    max_embed_yaw_deg = 45.0  #: beyond it dlib's frontal-trained ResNet embeds profiles poorly

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
