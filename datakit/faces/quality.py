"""Face quality: sharpness, a 0..1 quality score, and the JPEG head crop kept as a reference image
(:func:`head_crop`: up to ``CROP_MAX_SIDE`` px, with the face box inside it and a near-duplicate thumbnail).

``face_quality`` is the product of five factors, each in 0..1, so a face is only as good as its weakest
aspect and the result stays in 0..1:

- size: ``min(face_px / 112, 1)``; 112 px is the input size of the ArcFace family, and above it a bigger
  face adds little identity detail;
- sharpness: ``s / (s + SHARPNESS_HALF)`` with ``s`` from :func:`sharpness` (0.5 at ``SHARPNESS_HALF``);
- detection score, clipped to 0..1;
- frontalness: ``0.5 + 0.5 * max(cos(yaw), 0)`` (1 frontal, 0.5 in profile; unknown pose counts as
  frontal), so profiles still rank among themselves for the profile view slots but lose to frontal
  faces in a track's quality-weighted embedding;
- frame edge: the fraction of the box inside the frame, times ``EDGE_PENALTY`` when the box touches or
  crosses the frame border (a cut face).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from datakit.faces.base import Face

#: Side (px) the face region is resized to before the Laplacian, so sharpness does not depend on face size.
SHARPNESS_SIDE_PX = 112
#: Sharpness that scores 0.5. Measured with SHARPNESS_SIDE_PX = 112 on YuNet boxes: sharp stills 140-720,
#: in-focus video faces 80-360, the out-of-focus audience behind the Hamilton close-up 2-3.
SHARPNESS_HALF = 100.0
#: Face size (px, sqrt of box area) at which the size factor saturates.
FULL_SIZE_PX = 112.0
#: Factor applied to faces whose box touches or crosses the frame border.
EDGE_PENALTY = 0.7


def _clipped_box(bbox: tuple[float, float, float, float], width: int, height: int) -> tuple[int, ...]:
    x0, y0, x1, y1 = bbox
    return (max(math.floor(x0), 0), max(math.floor(y0), 0), min(math.ceil(x1), width), min(math.ceil(y1), height))


def sharpness(frame_bgr: np.ndarray, bbox: tuple[float, float, float, float]) -> float:
    """Variance of the Laplacian of the face region, resized to 112x112 gray (scale-independent)."""
    height, width = frame_bgr.shape[:2]
    left, top, right, bottom = _clipped_box(bbox, width, height)
    if right - left < 2 or bottom - top < 2:
        return 0.0
    gray = cv2.cvtColor(frame_bgr[top:bottom, left:right], cv2.COLOR_BGR2GRAY)
    gray = cv2.resize(gray, (SHARPNESS_SIDE_PX, SHARPNESS_SIDE_PX), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def face_quality(face: Face, sharpness: float, frame_shape: tuple[int, ...]) -> float:
    """Quality of one face in 0..1 (see the module docstring for the factors)."""
    height, width = frame_shape[:2]
    size = min(face.face_px / FULL_SIZE_PX, 1.0)
    sharp = max(sharpness, 0.0) / (max(sharpness, 0.0) + SHARPNESS_HALF)
    det = min(max(face.det_score, 0.0), 1.0)
    yaw = face.yaw_deg
    frontal = 1.0 if yaw is None or yaw != yaw else 0.5 + 0.5 * max(math.cos(math.radians(yaw)), 0.0)
    x0, y0, x1, y1 = face.bbox
    area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    inside_w = max(min(x1, width) - max(x0, 0.0), 0.0)
    inside_h = max(min(y1, height) - max(y0, 0.0), 0.0)
    edge = inside_w * inside_h / area if area > 0 else 0.0
    if x0 <= 0 or y0 <= 0 or x1 >= width or y1 >= height:
        edge *= EDGE_PENALTY
    return float(min(max(size * sharp * det * frontal * edge, 0.0), 1.0))


#: Default long side (px) of a reference crop: big enough for training at 480p/720p; never upscaled.
CROP_MAX_SIDE = 512
#: Side (px) of the gray thumbnail of a crop that ``datakit.passes.references`` compares to find near-duplicates.
THUMB_SIDE = 32


@dataclass(frozen=True, slots=True)
class HeadCrop:
    """A reference head crop: JPEG bytes, their size, the face box inside them, and a small gray thumbnail."""

    jpeg: bytes
    width: int
    height: int
    face_box: tuple[float, float, float, float]  # x0, y0, x1, y1 in crop pixels, clipped to the crop
    thumb: bytes  # THUMB_SIDE x THUMB_SIDE uint8 gray of the whole crop (squashed to a square), row-major


def head_crop(
    frame_bgr: np.ndarray, bbox: tuple[float, float, float, float], *, scale: float = 1.6, max_side: int = CROP_MAX_SIDE
) -> HeadCrop:
    """The reference head crop of one face: the box grown ``scale`` x around its centre, clipped to the frame,
    shrunk (never enlarged) so its long side is at most ``max_side``, JPEG quality 90.

    ``face_box`` is the detector box in the crop's pixels (same scale as the JPEG), clipped to the crop where
    the face is cut by the frame edge, so a trainer can re-crop around the face. ``thumb`` is the crop region
    shrunk to ``THUMB_SIDE`` px gray (from the frame, before JPEG): the near-duplicate descriptor of
    :mod:`datakit.passes.references`.
    """
    height, width = frame_bgr.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in bbox)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = scale * (x1 - x0) / 2, scale * (y1 - y0) / 2
    grown = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    left, top, right, bottom = _clipped_box(grown, width, height)
    if right - left < 1 or bottom - top < 1:
        raise ValueError(f"box {bbox} lies outside the {width}x{height} frame")
    crop = frame_bgr[top:bottom, left:right]
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    thumb = cv2.resize(gray, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    factor_x = factor_y = 1.0
    long_side = max(crop.shape[:2])
    if long_side > max_side:
        factor = max_side / long_side
        size = (max(round(crop.shape[1] * factor), 1), max(round(crop.shape[0] * factor), 1))
        factor_x, factor_y = size[0] / crop.shape[1], size[1] / crop.shape[0]
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    out_w, out_h = crop.shape[1], crop.shape[0]
    face_box = (
        min(max((x0 - left) * factor_x, 0.0), out_w),
        min(max((y0 - top) * factor_y, 0.0), out_h),
        min(max((x1 - left) * factor_x, 0.0), out_w),
        min(max((y1 - top) * factor_y, 0.0), out_h),
    )
    return HeadCrop(encoded.tobytes(), int(crop.shape[1]), int(crop.shape[0]), face_box, thumb.tobytes())


def head_crop_jpeg(
    frame_bgr: np.ndarray, bbox: tuple[float, float, float, float], scale: float = 1.6, max_side: int = 256
) -> tuple[bytes, int, int]:
    """:func:`head_crop`'s JPEG only, long side at most ``max_side`` (256 by default: photo references).
    Returns (jpeg bytes, width, height)."""
    crop = head_crop(frame_bgr, bbox, scale=scale, max_side=max_side)
    return crop.jpeg, crop.width, crop.height
