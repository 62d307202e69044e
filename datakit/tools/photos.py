"""Still photos as queries: read one (EXIF-rotated, shrunk), find its faces left to right, embed each.

The same steps as ``harmoview.photo_refs`` takes for a reference photo (which may delegate its reading to
:func:`read_photo_bgr`): photos are shrunk to ``PHOTO_MAX_SIDE`` first, because the detectors are trained
around 640 px and a full-size phone photo turns one face into several phantom boxes; the face stack's
detector then sees the frame at its own ``detect_max_side``. A photo the face fills (a tight crop, an aligned
face-crop set) is found through :meth:`FaceStack.detect_photo`, which pads it when the first look finds
nothing. Faces are numbered from the left (``--face N``, 0 = leftmost), as in ``harmoview generate --face``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from datakit.faces import FaceStack

__all__ = ["IMAGE_SUFFIXES", "PHOTO_MAX_SIDE", "NoFaceError", "PhotoFace", "embed_photo", "read_photo_bgr"]

#: Photos are shrunk to this long side first: the detectors are trained around 640 px and a full-size phone
#: photo (4000 px) turns one face into several phantom boxes (the detector's own bound then applies too).
PHOTO_MAX_SIDE = 1280
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class NoFaceError(ValueError):
    """A photo in which the face stack finds no face; the message names the file."""


@dataclass(slots=True)
class PhotoFace:
    """One face of a photo and its identity embedding."""

    path: Path
    face: int  # 0 = leftmost
    num_faces: int
    bbox: tuple[float, float, float, float]  # in the (shrunk) photo's pixels
    face_px: float
    yaw_deg: float | None
    embedding: np.ndarray | None  # (D,) float32, L2-normalised; None when the embedder could not embed it

    def describe(self) -> dict:
        """JSON-able description (no embedding)."""
        return {
            "image": str(self.path),
            "face": self.face,
            "num_faces": self.num_faces,
            "bbox": [round(float(v), 1) for v in self.bbox],
            "face_px": round(self.face_px, 1),
            "yaw_deg": None if self.yaw_deg is None else round(float(self.yaw_deg), 1),
        }


def read_photo_bgr(path: str | Path, max_side: int = PHOTO_MAX_SIDE) -> np.ndarray:
    """A photo as a uint8 BGR array (EXIF orientation applied), long side shrunk to ``max_side``."""
    import cv2
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"photo {path} does not exist")
    try:
        with Image.open(path) as image:
            rgb = np.array(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"photo {path} is not a readable image ({exc})") from exc
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    long_side = max(bgr.shape[:2])
    if max_side and long_side > max_side:
        factor = max_side / long_side
        size = (max(round(bgr.shape[1] * factor), 1), max(round(bgr.shape[0] * factor), 1))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    return bgr


def embed_photo(path: str | Path, stack: FaceStack, *, face: int | None = None) -> list[PhotoFace]:
    """Every face of the photo (or only face ``face``, 0 = leftmost), embedded with ``stack``.

    Raises :class:`NoFaceError` when the photo shows no face, ``ValueError`` for a ``face`` out of range.
    """
    path = Path(path)
    frame = read_photo_bgr(path)
    faces = sorted(stack.detect_photo(frame), key=lambda f: f.bbox[0])  # tight crops too (padded retry)
    if not faces:
        raise NoFaceError(f"no face found in photo {path} (face stack {stack.name})")
    chosen = list(enumerate(faces))
    if face is not None:
        if not 0 <= face < len(faces):
            raise ValueError(f"--face {face}: photo {path} has {len(faces)} face(s) (0 = leftmost)")
        chosen = [chosen[face]]
    embedder = stack.embedder
    chips = [embedder.chip(frame, f) for _, f in chosen]
    vectors = embedder.embed(chips)
    out = []
    for (i, f), vec in zip(chosen, vectors, strict=True):
        vec = np.asarray(vec, np.float32)
        ok = bool(np.isfinite(vec).all() and np.linalg.norm(vec) > 1e-6)
        out.append(
            PhotoFace(
                path=path,
                face=i,
                num_faces=len(faces),
                bbox=tuple(float(v) for v in f.bbox),
                face_px=f.face_px,
                yaw_deg=f.yaw_deg,
                embedding=vec if ok else None,
            )
        )
    return out
