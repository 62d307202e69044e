"""Still photos as queries: read one (EXIF-rotated, shrunk), find its faces left to right, embed each.

The same steps as ``harmoview.photo_refs`` takes for a reference photo (which may delegate its reading to
:func:`read_photo_bgr`): photos are shrunk to ``PHOTO_MAX_SIDE`` first, because the detectors are trained
around 640 px and a full-size phone photo turns one face into several phantom boxes; the face stack's
detector then sees the frame at its own ``detect_max_side``. A photo the face fills (a tight crop, an aligned
face-crop set) is found through :meth:`FaceStack.detect_photo`, which pads it when the first look finds
nothing. Faces are numbered from the left (``--face N``, 0 = leftmost), as in ``harmoview generate --face``.

Every user photo (query photos, leakage benchmark images, ``harmoview generate --ref``, evaluation references)
is opened through :func:`open_image`, which reads the header's size before any pixel is decoded and refuses a
photo above ``MAX_PHOTO_PIXELS``: a few-KB PNG can declare 12000x12000 pixels and decode into gigabytes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from datakit.faces import FaceStack

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PHOTO_PIXELS",
    "PHOTO_MAX_SIDE",
    "NoFaceError",
    "PhotoFace",
    "PhotoTooLargeError",
    "embed_photo",
    "open_image",
    "read_photo_bgr",
]

#: Photos are shrunk to this long side first: the detectors are trained around 640 px and a full-size phone
#: photo (4000 px) turns one face into several phantom boxes (the detector's own bound then applies too).
PHOTO_MAX_SIDE = 1280
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: The most pixels a photo may declare before it is decoded. 64 MP holds any camera or phone photo (a 200 MP
#: phone sensor saves 50 MP by default, a 61 MP full-frame camera fits) and costs at most ~200 MB as RGB; a
#: decompression bomb (a 12000x12000 single-colour PNG is a few KB and 432 MB decoded) is refused from its
#: header. Below Pillow's own limit (``Image.MAX_IMAGE_PIXELS``, ~89 MP, only a warning until twice that).
MAX_PHOTO_PIXELS = 64_000_000


class PhotoTooLargeError(ValueError):
    """A photo whose header declares more than ``MAX_PHOTO_PIXELS`` pixels; refused before decoding."""


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


def open_image(
    source: str | Path | bytes, name: str | None = None, *, max_pixels: int = MAX_PHOTO_PIXELS
) -> Image.Image:
    """The image ``source`` (a path or encoded bytes) opened lazily, its header's size checked, not decoded.

    Raises :class:`PhotoTooLargeError` (naming ``name`` or the path, and the size) above ``max_pixels``;
    Pillow's ``OSError`` (``UnidentifiedImageError``) for data that is not an image. Use as a context manager.
    """
    from PIL import Image

    label = name or (str(source) if not isinstance(source, bytes) else "image")
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():  # Pillow warns from ~89 MP; the budget below is the one that decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)  # reads the header only; pixels are decoded by load() / convert()
    except Image.DecompressionBombError as exc:  # Pillow's own limit (2x MAX_IMAGE_PIXELS) hit in open()
        raise PhotoTooLargeError(f"{label} is too large to decode ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise PhotoTooLargeError(
            f"{label} is {width}x{height} pixels ({width * height / 1e6:.0f} MP), over the "
            f"{max_pixels / 1e6:.0f} MP limit for photos: refused without decoding (shrink it first)"
        )
    return image


def read_photo_bgr(path: str | Path, max_side: int = PHOTO_MAX_SIDE) -> np.ndarray:
    """A photo as a uint8 BGR array (EXIF orientation applied), long side shrunk to ``max_side`` (0: kept).

    Raises ``FileNotFoundError`` for a missing file, :class:`PhotoTooLargeError` for a photo above
    ``MAX_PHOTO_PIXELS`` (checked before decoding) and ``ValueError`` for one that is not a readable image.
    """
    import cv2
    from PIL import ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"photo {path} does not exist")
    try:
        with open_image(path, f"photo {path}") as image:
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
