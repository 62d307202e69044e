"""Sharpness, face quality and the reference head crop."""

from __future__ import annotations

import cv2
import numpy as np

from datakit.faces.base import Face
from datakit.faces.quality import face_quality, head_crop_jpeg, sharpness


def test_quality_prefers_big_sharp_face_over_tiny_blurred_copy(default_stack, still):
    image = still("obama.jpg")
    face = default_stack.detect(image)[0]
    big_sharpness = sharpness(image, face.bbox)
    big = face_quality(face, big_sharpness, image.shape)

    factor = 0.15  # ~40 px face
    small_image = cv2.GaussianBlur(cv2.resize(image, None, fx=factor, fy=factor), (5, 5), 0)
    small_face = Face(bbox=tuple(v * factor for v in face.bbox), det_score=face.det_score, yaw_deg=face.yaw_deg)
    small_sharpness = sharpness(small_image, small_face.bbox)
    small = face_quality(small_face, small_sharpness, small_image.shape)

    assert 0.0 <= small < big <= 1.0
    assert big > 0.5 and small < 0.25
    assert small_sharpness < big_sharpness


def test_quality_factors():
    shape = (360, 640, 3)
    centre = Face(bbox=(200.0, 100.0, 320.0, 240.0), det_score=0.9, yaw_deg=0.0)
    profile = Face(bbox=centre.bbox, det_score=0.9, yaw_deg=85.0)
    cut = Face(bbox=(580.0, 100.0, 700.0, 240.0), det_score=0.9, yaw_deg=0.0)
    q_centre = face_quality(centre, 300.0, shape)
    assert face_quality(profile, 300.0, shape) < q_centre
    assert face_quality(cut, 300.0, shape) < 0.5 * q_centre
    assert face_quality(centre, 0.0, shape) == 0.0
    assert 0.0 <= face_quality(centre, 1e9, shape) <= 1.0


def test_sharpness_is_scale_independent(still):
    image = still("obama2.jpg")
    bbox = (195.0, 224.0, 471.0, 614.0)
    half = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    full, reduced = sharpness(image, bbox), sharpness(half, tuple(v / 2 for v in bbox))
    assert 0.5 < reduced / full < 2.0
    assert sharpness(image, (-50.0, -50.0, -10.0, -10.0)) == 0.0


def test_head_crop_jpeg(still):
    image = still("obama.jpg")
    data, width, height = head_crop_jpeg(image, (374.0, 94.0, 605.0, 416.0))
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == (height, width)
    assert max(width, height) == 256
    assert abs(width / height - 231 / 322) < 0.02  # 1.6x grown box keeps the aspect ratio (not clipped)
    small, w_small, h_small = head_crop_jpeg(image, (0.0, 0.0, 40.0, 50.0))  # clipped at the corner
    assert (w_small, h_small) == (52, 65)
    assert data[:2] == b"\xff\xd8" and small[:2] == b"\xff\xd8"
