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

import cv2
import numpy as np

#: Default long side (px) of the frame a detector sees. YuNet at full 4K size reports two or three
#: displaced boxes for one ~600 px face (det 0.6-0.72, wrong yaw); at <= 960 px it finds one.
DETECT_MAX_SIDE = 960
#: Small faces in very large frames: YuNet needs a face of ~16-20 px after the shrink, so at 4K the 960 px
#: bound (a 0.25 shrink) loses faces under ~96 px (48 px: 1 in 4 found). A frame shrunk by more than half
#: gets a second pass at half size that may only *add* faces smaller than ``SMALL_FACE_PX`` (in first-pass
#: pixels) where the first pass found none; large faces always come from the first pass, because at half
#: size a big close-up gives phantom boxes again (biden2.jpg scaled 3x: two boxes at 1706 px, one at 960).
#: Measured (benchmarks/identity_quality.py --small-faces): a second look at half size finds every face
#: from 48 px up at 4K, for ~3x the first pass's cost; up to 1080p nothing changes.
SECOND_PASS_SCALE = 0.5
SMALL_FACE_PX = 32.0
#: Tight crops (a photo the face fills, an aligned face-crop set): SCRFD (every insightface pack) sees the
#: image resized to 640 px, so the face becomes ~600 px, above its largest anchors, and finds nothing;
#: YuNet is less sensitive. :meth:`FaceStack.detect_photo` then looks again at the image with a black border
#: of this fraction of its long side on every side (the face then spans at most half the padded image).
#: Measured on crops cut at the face boxes (YuNet's and SCRFD's) of 7 shipped videos and of 5 stills: 47 real
#: faces of 60-340 px, plus 7 boxes on dark non-faces. SCRFD (insightface_sc_int8) unpadded finds 0/47 (the
#: uncropped stills it finds); padded by 0.2 / 0.3 / 0.5 / 0.75 / 1.0: 40 / 46 / 46 / 46 / 46, mean score
#: 0.67 / 0.74 / 0.80 / 0.81 / 0.71, lowest 0.52 / 0.54 / 0.62 / 0.57 / 0.53. 0.5 scores best; the face it
#: misses, Lacamoire's edge-cut profile, SCRFD misses in the whole frame too. A replicated border finds
#: fewer (39 at 0.5). YuNet finds 47/47 with or without a border. SCRFD found none of the non-faces at any pad.
TIGHT_CROP_PAD = 0.5


def add_small_faces(first: list[Face], second: list[Face], limit_px: float) -> list[Face]:
    """``first`` plus the faces of ``second`` smaller than ``limit_px`` whose centre lies in no box of
    ``first`` (both in source pixels), best score first."""
    boxes = [f.bbox for f in first]
    extra = []
    for face in second:
        if face.face_px >= limit_px:
            continue
        cx, cy = (face.bbox[0] + face.bbox[2]) / 2, (face.bbox[1] + face.bbox[3]) / 2
        if not any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes):
            extra.append(face)
    return sorted(first + extra, key=lambda face: -face.det_score)


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


def shrink_for_detection(frame_bgr: np.ndarray, max_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """The frame shrunk so that its long side is at most ``max_side`` (0: unchanged), and the (x, y)
    factors from its pixels back to the source frame's. Never enlarges; INTER_AREA avoids aliasing."""
    height, width = frame_bgr.shape[:2]
    if max_side <= 0 or max(height, width) <= max_side:
        return frame_bgr, (1.0, 1.0)
    scale = max_side / max(height, width)
    size = (max(round(width * scale), 1), max(round(height * scale), 1))  # (w, h)
    small = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)
    return small, (width / size[0], height / size[1])


def faces_to_source(faces: list[Face], factors: tuple[float, float]) -> list[Face]:
    """Map boxes and landmarks (5 and 68 points) found on a shrunk frame back to source pixels, in place."""
    fx, fy = factors
    if (fx, fy) == (1.0, 1.0):
        return faces
    scale = np.array([fx, fy], np.float32)
    for face in faces:
        x0, y0, x1, y1 = face.bbox
        face.bbox = (x0 * fx, y0 * fy, x1 * fx, y1 * fy)
        if face.landmarks is not None:
            face.landmarks = (face.landmarks * scale).astype(np.float32)
        if face.extra.get("landmarks68") is not None:
            face.extra["landmarks68"] = (np.asarray(face.extra["landmarks68"]) * scale).astype(np.float32)
    return faces


def pad_image(image_bgr: np.ndarray, pad: float = TIGHT_CROP_PAD) -> tuple[np.ndarray, int]:
    """The image with a black border of ``pad`` x its long side on every side, and that border (px)."""
    border = max(round(pad * max(image_bgr.shape[:2])), 1)
    padded = cv2.copyMakeBorder(image_bgr, border, border, border, border, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return padded, border


def faces_from_padded(faces: list[Face], border: int, shape: tuple[int, ...]) -> list[Face]:
    """Faces found on :func:`pad_image`'s output moved back to the original image, in place.

    Boxes are clipped to the image (crops, sharpness and quality read inside it); landmarks are not, since
    a cut face's eye or mouth corner may lie outside, and alignment (``norm_crop``'s warp) fills the
    outside with black, as the padded image had it.
    """
    height, width = shape[:2]
    for face in faces:
        x0, y0, x1, y1 = (v - border for v in face.bbox)
        face.bbox = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
        if face.landmarks is not None:
            face.landmarks = (face.landmarks - border).astype(np.float32)
        if face.extra.get("landmarks68") is not None:
            face.extra["landmarks68"] = (np.asarray(face.extra["landmarks68"]) - border).astype(np.float32)
    return [face for face in faces if face.bbox[2] > face.bbox[0] and face.bbox[3] > face.bbox[1]]


class Detector(Protocol):
    """Finds faces (box, score, 5 landmarks) in a frame, reported in the frame's own pixels.

    A detector may look at a shrunk copy of the frame (see :func:`shrink_for_detection`); pose,
    embedding and crops always use the full-resolution frame.

    ``detect`` returns the faces scoring at least ``score_threshold``; ``detect(frame, min_score=...)``
    also reports weaker detections down to ``min_score``: the tracker (datakit.video.tracking) lets those extend
    a live track but never start one. ``low_score_threshold`` is the backend's default ``min_score`` there.
    """

    name: str
    sees_profiles: bool
    score_threshold: float
    low_score_threshold: float
    #: the score a track must reach once to be a person, and a face to give a reference (datakit.passes.gates)
    confident_score: float

    def detect(self, frame_bgr: np.ndarray, min_score: float | None = None) -> list[Face]: ...


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
    #: faces smaller (px) or turned further (|yaw| deg) than these are not embedded: calibrated per model
    min_embed_px: float
    max_embed_yaw_deg: float

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

    def detect_photo(self, image_bgr: np.ndarray) -> list[Face]:
        """Detect faces in a still photo (query, reference or evaluation photo), tight crops included.

        Like :meth:`detect`; when that finds nothing, looks again at the image padded by
        :data:`TIGHT_CROP_PAD` (a face that fills the image is too large for SCRFD) and reports those faces
        in the image's own pixels. Pose is estimated on the padded image, where the face has its context.
        Only an empty first look retries, so a photo with a face keeps exactly its faces (no phantom from
        the border). Video frames do not take this path: on the shipped footage at 3 fps, none of the 37
        frames without an SCRFD face gave a face when padded, and the retry cost those videos 20-40% more
        detection time.
        """
        faces = self.detect(image_bgr)
        if faces:
            return faces
        padded, border = pad_image(image_bgr)
        return faces_from_padded(self.detect(padded), border, image_bgr.shape)

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
