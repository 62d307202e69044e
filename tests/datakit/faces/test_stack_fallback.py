"""The pip-only fallback stack (dlib HOG + 68-landmark PnP + dlib ResNet) and how ``auto`` picks it."""

from __future__ import annotations

import numpy as np

from datakit.views import ViewBins


def test_auto_without_models_dir_falls_back_with_a_clear_note(fallback_stack):
    assert fallback_stack.name == "dlib-hog+dlib68+dlib"
    assert fallback_stack.detector.sees_profiles is False
    notes = " ".join(fallback_stack.notes)
    assert "dlib-hog+dlib68+dlib" in notes
    assert "profile" in notes
    assert "--models-dir" in notes and "DATAKIT_MODELS_DIR" in notes


def test_fallback_detects_stills(fallback_stack, still):
    assert len(fallback_stack.detect(still("two_people.jpg"))) == 2
    faces = fallback_stack.detect(still("obama.jpg"))
    assert len(faces) == 1
    face = faces[0]
    assert 0.5 <= face.det_score <= 1.0
    assert face.extra["landmarks68"].shape == (68, 2)
    right_eye, left_eye, nose, right_mouth, left_mouth = face.landmarks
    assert right_eye[0] < nose[0] < left_eye[0] and right_mouth[0] < left_mouth[0]
    assert abs(face.yaw_deg) < 20 and ViewBins()(face.yaw_deg) == "frontal"


def test_fallback_misses_the_profile(fallback_stack, hamilton_frames):
    """Documented limitation: HOG is a frontal detector, the Lacamoire profile is not found at all."""
    for frame in hamilton_frames.values():
        assert all(face.face_px < 120 for face in fallback_stack.detect(frame))


def test_pnp_yaw_sign_matches_mirroring(fallback_stack, default_stack, still):
    """A face turned one way and its mirror image get opposite yaw, and PnP agrees in sign with FSA-Net
    (whose sign was checked on the labelled profile) on a clearly turned face."""
    image = still("two_people.jpg")  # both face slightly to the image right (FSA-Net yaw ~ -14)
    fsanet_yaws = [face.yaw_deg for face in default_stack.detect(image)]
    pnp = sorted(fallback_stack.detect(image), key=lambda face: face.yaw_deg)[0]
    assert min(fsanet_yaws) < -8 and pnp.yaw_deg < -8
    mirrored = sorted(fallback_stack.detect(np.ascontiguousarray(image[:, ::-1])), key=lambda f: f.yaw_deg)
    assert mirrored[-1].yaw_deg > 8


def test_fallback_embeddings(fallback_stack, still):
    def embed(name):
        image = still(name)
        face = max(fallback_stack.detect(image), key=lambda f: f.face_px)
        return fallback_stack.embedder.embed([fallback_stack.embedder.chip(image, face)])[0]

    obama, obama2, biden = embed("obama.jpg"), embed("obama2.jpg"), embed("biden.jpg")
    threshold = fallback_stack.embedder.same_person_cosine
    assert float(obama @ obama2) > threshold > float(obama @ biden)


def test_pnp_recovers_known_rotations():
    """Project the generic head under known rotations; PnP returns the angles in base.py's convention."""
    import cv2

    from datakit.faces.dlib_fallback import _MODEL_POINTS_MM, pose_from_68

    def project(rvec):
        points = np.zeros((68, 3))
        for index, xyz in _MODEL_POINTS_MM.items():
            points[index] = xyz
        camera = np.array([[640.0, 0, 320], [0, 640, 180], [0, 0, 1]])
        image, _ = cv2.projectPoints(points, np.array(rvec, float), np.array([0.0, 0, 700]), camera, None)
        return image.reshape(68, 2)

    yaw, pitch, roll = pose_from_68(project([0, np.radians(30), 0]), (360, 640))  # about the down axis
    assert abs(yaw - 30) < 2 and abs(pitch) < 2 and abs(roll) < 2  # turned to the image left
    yaw, pitch, roll = pose_from_68(project([np.radians(-15), 0, 0]), (360, 640))
    assert abs(pitch - 15) < 2 and abs(yaw) < 2  # chin forward: looks up
    yaw, pitch, roll = pose_from_68(project([0, 0, np.radians(20)]), (360, 640))
    assert abs(roll - 20) < 2 and abs(yaw) < 2  # clockwise in the image (y down)


def test_fallback_stack_was_chosen_for_the_missing_files(tmp_path, monkeypatch):
    """`auto` explains itself: the choice names the missing default-stack files."""
    from datakit.faces import choose_auto_backend

    monkeypatch.delenv("DATAKIT_INSIGHTFACE_PACK", raising=False)
    choice = choose_auto_backend(tmp_path / "nowhere")
    assert choice.backend == "dlib" and choice.insightface_pack is None
    assert "insightface pack" in choice.reason and "does not exist" in choice.notes[0]
