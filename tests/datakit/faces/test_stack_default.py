"""The default stack (YuNet + FSA-Net + dlib) on real stills and the labelled Hamilton profile."""

from __future__ import annotations

import numpy as np

from datakit.faces.base import Face
from datakit.views import ViewBins


def _largest(faces: list[Face]) -> Face:
    return max(faces, key=lambda face: face.face_px)


def _embed(stack, image: np.ndarray) -> np.ndarray:
    face = _largest(stack.detect(image))
    return stack.embedder.embed([stack.embedder.chip(image, face)])[0]


def test_detection_counts_on_stills(default_stack, still):
    assert len(default_stack.detect(still("two_people.jpg"))) == 2
    faces = default_stack.detect(still("obama.jpg"))
    assert len(faces) == 1
    face = faces[0]
    assert face.det_score >= 0.6 and face.face_px > 150
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    # base.py order: the subject's right eye first, which is on the image left of a frontal face.
    right_eye, left_eye, nose, right_mouth, left_mouth = face.landmarks
    assert right_eye[0] < nose[0] < left_eye[0] and right_mouth[0] < left_mouth[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])


def test_frontal_still_is_frontal(default_stack, still):
    face = _largest(default_stack.detect(still("obama.jpg")))
    assert abs(face.yaw_deg) < 20
    assert ViewBins()(face.yaw_deg) == "frontal"


def test_profile_found_and_binned_left_profile(default_stack, hamilton_frames):
    """Alex Lacamoire in profile facing frame-left: yaw ~ +80-90 deg in our convention (base.py)."""
    bins = ViewBins()
    for index in (30, 50):
        faces = default_stack.detect(hamilton_frames[index])
        profile = _largest(faces)  # the close-up; the audience behind is smaller
        assert profile.face_px > 120, index
        assert profile.yaw_deg > 60, (index, profile.yaw_deg)
        assert bins(profile.yaw_deg) == "left_profile"


def test_yaw_sign_on_labelled_profile(default_stack, hamilton_frames):
    """The nose sits left of the eyes in the image and the yaw is positive: the face points to image left."""
    yaws = []
    for frame in hamilton_frames.values():
        profile = _largest(default_stack.detect(frame))
        yaws.append(profile.yaw_deg)
        nose_x = profile.landmarks[2, 0]
        assert nose_x < profile.landmarks[:2, 0].mean()
    assert np.median(yaws) > 60


def test_embeddings_separate_identities(default_stack, still):
    obama, obama2, biden = (_embed(default_stack, still(n)) for n in ("obama.jpg", "obama2.jpg", "biden.jpg"))
    threshold = default_stack.embedder.same_person_cosine
    assert obama.shape == (128,) and obama.dtype == np.float32
    for vector in (obama, obama2, biden):
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    assert float(obama @ obama2) > threshold
    assert float(obama @ biden) < threshold


def test_embed_batch_and_empty(default_stack, still):
    image = still("two_people.jpg")
    faces = sorted(default_stack.detect(image), key=lambda face: face.bbox[0])  # Obama left, Biden right
    chips = [default_stack.embedder.chip(image, face) for face in faces]
    assert all(chip.shape == (150, 150, 3) and chip.dtype == np.uint8 for chip in chips)
    batch = default_stack.embedder.embed(chips)
    assert batch.shape == (2, 128)
    obama = _embed(default_stack, still("obama.jpg"))
    threshold = default_stack.embedder.same_person_cosine
    assert float(batch[0] @ obama) > threshold > float(batch[1] @ obama)
    assert default_stack.embedder.embed([]).shape == (0, 128)


def test_describe(default_stack):
    description = default_stack.describe()
    assert description["name"] == "yunet+fsanet+dlib"
    assert description["sees_profiles"] is True
    assert description["embedding_dim"] == 128
    assert description["notes"] == []


def test_auto_with_the_shared_models_is_the_default_stack(models_dir, monkeypatch):
    """The documented default: a models folder with YuNet/FSA-Net and no configured or fetched pack."""
    from datakit.faces import build_face_stack

    monkeypatch.delenv("DATAKIT_INSIGHTFACE_PACK", raising=False)
    stack = build_face_stack("auto", models_dir=models_dir)
    assert stack.name == "yunet+fsanet+dlib" and stack.notes == []
