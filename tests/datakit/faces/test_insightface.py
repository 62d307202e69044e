"""The insightface backend's real code path with the detector-only pack (SCRFD-500M)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("insightface")


@pytest.fixture(scope="module")
def insightface_stack(models_dir):
    from datakit.faces import build_face_stack

    return build_face_stack("insightface", models_dir=models_dir, insightface_pack=models_dir / "insightface_det_500m")


def test_det_only_pack_finds_both_faces(insightface_stack, still):
    image = still("two_people.jpg")
    faces = sorted(insightface_stack.detect(image), key=lambda face: face.bbox[0])
    assert len(faces) == 2
    assert faces[0].bbox[2] < image.shape[1] / 2 < faces[1].bbox[0]  # Obama left, Biden right
    for face in faces:
        assert face.det_score >= 0.5 and face.landmarks.shape == (5, 2)
        right_eye, left_eye, nose = face.landmarks[:3]
        assert right_eye[0] < nose[0] < left_eye[0]
        assert face.yaw_deg is not None  # FSA-Net from models_dir: the pack has no landmark_3d_68


def test_det_only_pack_falls_back_to_dlib_embedder(insightface_stack, still):
    assert insightface_stack.embedder.name == "dlib-resnet-v1"
    assert any("no recognition model" in note for note in insightface_stack.notes)
    image = still("two_people.jpg")
    faces = insightface_stack.detect(image)
    vectors = insightface_stack.embedder.embed([insightface_stack.embedder.chip(image, f) for f in faces])
    assert vectors.shape == (2, 128)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < insightface_stack.embedder.same_person_cosine  # two people


def test_det_only_pack_without_pose_model_notes_it(models_dir, monkeypatch):
    from datakit.faces import build_face_stack

    monkeypatch.delenv("DATAKIT_MODELS_DIR", raising=False)
    stack = build_face_stack("insightface", insightface_pack=models_dir / "insightface_det_500m")
    assert stack.pose.name == "none"
    assert any("no pose model" in note for note in stack.notes)


def test_pack_from_environment_variable(models_dir, monkeypatch, tmp_path):
    from datakit.faces import ModelNotFoundError, build_face_stack

    monkeypatch.setenv("DATAKIT_INSIGHTFACE_PACK", str(tmp_path))  # empty folder: not a pack
    with pytest.raises(ModelNotFoundError, match="no insightface pack"):
        build_face_stack("insightface")
