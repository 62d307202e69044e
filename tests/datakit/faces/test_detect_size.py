"""Detection at a bounded input size: a 3x-scaled still finds one face, mapped back to source pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datakit.faces.base import Face, faces_to_source, shrink_for_detection
from datakit.views import ViewBins


@pytest.fixture(scope="module")
def obama_3x(still) -> tuple[np.ndarray, np.ndarray]:
    """``stills/obama.jpg`` (1137 x 910) and the same picture scaled 3x (3411 x 2730, a 4K-size frame)."""
    image = still("obama.jpg")
    return image, cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def full_size_stack(models_dir):
    """The default stack detecting at full frame size (the behaviour before the bound)."""
    from datakit.faces import build_face_stack

    return build_face_stack("yunet", models_dir=models_dir, detect_max_side=0)


def test_shrink_never_enlarges_and_maps_back():
    frame = np.zeros((720, 1280, 3), np.uint8)
    small, factors = shrink_for_detection(frame, 960)
    assert small.shape == (540, 960, 3) and factors == pytest.approx((4 / 3, 4 / 3))
    assert shrink_for_detection(frame, 0)[0] is frame and shrink_for_detection(frame, 2000)[1] == (1.0, 1.0)
    face = Face(bbox=(30.0, 60.0, 90.0, 120.0), det_score=0.9, landmarks=np.full((5, 2), 3.0, np.float32))
    face.extra["landmarks68"] = np.ones((68, 2), np.float32)
    faces_to_source([face], (2.0, 3.0))
    assert face.bbox == (60.0, 180.0, 180.0, 360.0)
    assert face.landmarks.dtype == np.float32 and np.allclose(face.landmarks, [6.0, 9.0])
    assert np.allclose(face.extra["landmarks68"], [2.0, 3.0])


def test_scaled_still_gives_one_face_in_the_same_view(default_stack, obama_3x):
    image, big = obama_3x
    bins = ViewBins()
    (small_face,) = default_stack.detect(image)
    (big_face,) = default_stack.detect(big)  # full size: 3 overlapping boxes at det 0.62-0.72
    assert bins(big_face.yaw_deg) == bins(small_face.yaw_deg) == "frontal"
    assert big_face.det_score > 0.9
    # Source pixels: the box and landmarks are 3x those of the still.
    assert np.allclose(np.array(big_face.bbox) / 3, small_face.bbox, atol=8)
    assert np.allclose(big_face.landmarks / 3, small_face.landmarks, atol=4)
    height, width = big.shape[:2]
    assert big_face.bbox[2] > width / 3 and big_face.bbox[3] > height / 4  # not left in shrunk coordinates


def test_max_side_zero_keeps_full_size_detection(default_stack, full_size_stack, obama_3x):
    image, big = obama_3x
    assert full_size_stack.detector.max_side == 0 and default_stack.detector.max_side == 960
    faces = full_size_stack.detect(big)
    assert len(faces) > 1  # the phantom boxes the bound removes
    assert max(face.det_score for face in faces) < 0.8
    # A frame below the bound is detected unchanged by both.
    frame = image[:900, :900]
    [a], [b] = default_stack.detector.detect(frame), full_size_stack.detector.detect(frame)
    assert a.bbox == b.bbox and np.array_equal(a.landmarks, b.landmarks)


def test_fallback_detector_maps_back(fallback_stack, obama_3x):
    image, big = obama_3x
    [small_face] = fallback_stack.detect(image)
    [big_face] = fallback_stack.detect(big)
    assert np.allclose(np.array(big_face.bbox) / 3, small_face.bbox, rtol=0.1, atol=15)
    assert np.allclose(big_face.extra["landmarks68"] / 3, small_face.extra["landmarks68"], atol=10)


def test_small_faces_in_a_4k_frame_are_found_by_the_second_look(default_stack, still):
    """48-64 px faces in a 3840x2160 frame are ~12-16 px after the 960 px shrink: too small for YuNet."""
    from datakit.faces.base import SMALL_FACE_PX

    face = still("obama.jpg")[60:560, 330:660]  # the head of the still, ~330 px wide
    frame = np.full((2160, 3840, 3), 110, np.uint8)
    spots = [(300, 400), (900, 1700), (1500, 3000), (600, 2600)]
    for (y, x), width in zip(spots, (64, 72, 80, 96), strict=True):
        small = cv2.resize(face, (width, round(width * face.shape[0] / face.shape[1])), interpolation=cv2.INTER_AREA)
        frame[y : y + small.shape[0], x : x + small.shape[1]] = small
    found = default_stack.detector.detect(frame)
    centres = [((f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2) for f in found]
    hits = sum(any(x <= cx <= x + 100 and y <= cy <= y + 140 for cx, cy in centres) for y, x in spots)
    assert hits == len(spots) and len(found) == len(spots)
    assert all(f.face_px < SMALL_FACE_PX * 4 for f in found)
