"""The face stack interface: detector, head-pose estimator and identity embedder behind one facade.

Each part is a small protocol so that backends swap (YuNet + FSA-Net + dlib by default, a pip-only dlib
fallback, insightface packs). The pipeline only ever talks to :class:`FaceStack`.

Conventions shared by every backend:
- frames are ``uint8`` BGR arrays ``(H, W, 3)`` as OpenCV gives them;
- ``bbox`` is ``(x0, y0, x1, y1)`` in frame pixels;
- ``landmarks`` is ``(5, 2)`` float32 in frame pixels, ordered right eye, left eye, nose tip,
  right mouth corner, left mouth corner (the subject's right/left; YuNet's order);
- yaw sign (see :mod:`datakit.views`): ``yaw_deg > 0`` means the face points towards the *image
  left* (the subject turns to their right); the ``left`` / ``left_profile`` view bins are faces pointing
  to image left. Pitch > 0 looks up; roll > 0 tilts the head clockwise in the image.
- embeddings are float32 and L2-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(slots=True)
class Face:
    """One detected face in one frame."""

    bbox: tuple[float, float, float, float]
    det_score: float
    landmarks: np.ndarray | None = None  # (5, 2) float32
    yaw_deg: float | None = None
    pitch_deg: float | None = None
    roll_deg: float | None = None
    extra: dict = field(default_factory=dict)  # backend-specific data (e.g. 68 landmarks)

    @property
    def face_px(self) -> float:
        """Face size: square root of the box area, in pixels."""
        x0, y0, x1, y1 = self.bbox
        return float(max(x1 - x0, 0.0) * max(y1 - y0, 0.0)) ** 0.5


class Detector(Protocol):
    """Finds faces (box, score, 5 landmarks) in a frame."""

    name: str
    sees_profiles: bool

    def detect(self, frame_bgr: np.ndarray) -> list[Face]: ...


class PoseEstimator(Protocol):
    """Fills ``yaw_deg`` / ``pitch_deg`` / ``roll_deg`` of faces in place."""

    name: str

    def estimate(self, frame_bgr: np.ndarray, faces: list[Face]) -> None: ...


class Embedder(Protocol):
    """Turns faces into identity embeddings, in two steps so the frame need not be kept.

    ``chip`` cuts the small aligned face image the embedder needs (cheap, done while the frame is in
    memory); ``embed`` runs the network on a batch of chips later, on the few faces worth embedding.
    """

    name: str
    dim: int
    #: cosine similarity above which two embeddings are taken as the same person (calibrated per model)
    same_person_cosine: float

    def chip(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray: ...

    def embed(self, chips: list[np.ndarray]) -> np.ndarray: ...  # (N, dim) float32, L2-normalised


@dataclass(slots=True)
class FaceStack:
    """A detector, a pose estimator and an embedder that together describe faces in frames."""

    name: str  # "yunet+fsanet+dlib", "dlib-hog+dlib68+dlib", "insightface:<pack>+..."
    detector: Detector
    pose: PoseEstimator
    embedder: Embedder
    notes: list[str] = field(default_factory=list)  # what this stack cannot see, fallbacks taken

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """Detect faces and estimate their head pose."""
        faces = self.detector.detect(frame_bgr)
        if faces:
            self.pose.estimate(frame_bgr, faces)
        return faces

    def describe(self) -> dict:
        """A JSON-able description for run.json and the run summary."""
        return {
            "name": self.name,
            "detector": self.detector.name,
            "pose": self.pose.name,
            "embedder": self.embedder.name,
            "embedding_dim": self.embedder.dim,
            "same_person_cosine": self.embedder.same_person_cosine,
            "sees_profiles": self.detector.sees_profiles,
            "notes": list(self.notes),
        }


class ModelNotFoundError(RuntimeError):
    """A model file or pack the user asked for is missing; the message names the flag/variable to set."""
