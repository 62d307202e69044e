"""Tight crops (the face fills the photo): found by every stack's photo path, linked to the same person.

SCRFD (the insightface packs' detector) finds no face in a crop cut at the face box; ``FaceStack.detect_photo``
looks again at the crop padded with a border (``TIGHT_CROP_PAD``), and maps the faces back.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.datakit.faces.conftest import HAMILTON, MEDIA, MODELS, STILLS, video_frames

pytest.importorskip("insightface")

#: Lin-Manuel Miranda's medium shot in the Hamilton clip (media README: frames 82-210, frontal to ~30 deg)
MIRANDA_FRAMES = (90, 120, 150, 180, 200)
#: (video, frame) pairs of people the media README names, one face each in that frame
FOOTAGE_PEOPLE = (
    ("single_face.mp4", 40),
    ("obama_weekly_address_1.mp4", 30),
    ("foreman_cif.mp4", 50),
    ("zhling_720p.mp4", 5),
    ("pexels_woman_expressions.mp4", 100),
)


@pytest.fixture(scope="module")
def arcface_stack():
    """SCRFD-500M + the int8 ArcFace (MobileFaceNet) of the shared test pack, FSA-Net pose."""
    from datakit.faces import build_face_stack

    return build_face_stack("insightface", models_dir=MODELS, insightface_pack=MODELS / "insightface_sc_int8")


@pytest.fixture(params=["yunet", "insightface"])
def stack(request, default_stack, arcface_stack):
    """Both stacks with a real detector that sees profiles."""
    return default_stack if request.param == "yunet" else arcface_stack


def _cut(image: np.ndarray, bbox) -> np.ndarray:
    """The image cut at a face box (clipped to the image): a tight crop."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (round(v) for v in bbox)
    return np.ascontiguousarray(image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)])


def _largest(faces):
    return max(faces, key=lambda face: face.face_px)


def _embedding(stack, image: np.ndarray, face) -> np.ndarray:
    return stack.embedder.embed([stack.embedder.chip(image, face)])[0]


@pytest.fixture(scope="module")
def miranda_frames() -> dict[int, np.ndarray]:
    return video_frames(HAMILTON, set(MIRANDA_FRAMES))


def _miranda_footage_embeddings(stack, frames: dict[int, np.ndarray]) -> np.ndarray:
    """(N, D) embeddings of the largest face of each Miranda frame, as the build embeds them."""
    vectors = []
    for index in MIRANDA_FRAMES:
        frame = frames[index]
        vectors.append(_embedding(stack, frame, _largest(stack.detect(frame))))
    return np.stack(vectors)


@pytest.mark.parametrize("name", ["lin-manuel-miranda.png", "alex-lacamoire.png"])
def test_tight_stills_are_found_by_both_stacks(stack, name):
    from datakit.tools.photos import embed_photo

    (face,) = embed_photo(STILLS / name, stack)
    assert face.num_faces == 1 and face.embedding is not None
    assert face.face_px > 150 and abs(face.yaw_deg) < 30  # both stills are frontal


@pytest.mark.parametrize("name", ["lin-manuel-miranda.png", "alex-lacamoire.png"])
def test_stills_cut_at_the_face_box_need_the_padded_retry_with_scrfd(arcface_stack, default_stack, still, name):
    image = still(name)
    crop = _cut(image, _largest(default_stack.detect(image)).bbox)
    assert arcface_stack.detect(crop) == []  # what the issue saw: SCRFD alone finds nothing
    (face,) = arcface_stack.detect_photo(crop)
    height, width = crop.shape[:2]
    x0, y0, x1, y1 = face.bbox
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height  # clipped to the crop
    assert (x1 - x0) * (y1 - y0) > 0.6 * width * height  # the face fills the crop
    right_eye, left_eye, nose = face.landmarks[:3]
    assert right_eye[0] < nose[0] < left_eye[0] and 0 < nose[1] < height  # landmarks back in crop pixels
    assert face.yaw_deg is not None and abs(face.yaw_deg) < 30


def test_miranda_still_and_its_tight_crop_link_to_his_footage_arcface(arcface_stack, still, miranda_frames):
    footage = _miranda_footage_embeddings(arcface_stack, miranda_frames)  # (5, 512)
    threshold = arcface_stack.embedder.same_person_cosine
    image = still("lin-manuel-miranda.png")
    crop = _cut(image, _largest(arcface_stack.detect(image)).bbox)
    for picture in (image, crop):
        face = _largest(arcface_stack.detect_photo(picture))
        cosines = footage @ _embedding(arcface_stack, picture, face)
        assert np.median(cosines) > threshold, cosines  # measured 0.47-0.64 (still), 0.46-0.67 (crop)
    other = still("obama.jpg")
    cosines = footage @ _embedding(arcface_stack, other, _largest(arcface_stack.detect_photo(other)))
    assert cosines.max() < threshold  # a different person stays apart (measured at most 0.05)


def test_miranda_still_and_its_tight_crop_link_to_his_footage_dlib(default_stack, still, miranda_frames):
    footage = _miranda_footage_embeddings(default_stack, miranda_frames)  # (5, 128)
    threshold = default_stack.embedder.same_person_cosine
    image = still("lin-manuel-miranda.png")
    crop = _cut(image, _largest(default_stack.detect(image)).bbox)
    for picture in (image, crop):
        face = _largest(default_stack.detect_photo(picture))
        cosines = footage @ _embedding(default_stack, picture, face)
        assert np.median(cosines) > threshold, cosines  # measured 0.94-0.98 for both


def test_clipped_box_of_a_padded_retry_still_aligns_for_dlib(models_dir, still):
    """The detector-only pack (SCRFD + the dlib embedder): dlib aligns inside the clipped box on the crop."""
    from datakit.faces import build_face_stack

    stack = build_face_stack("insightface", models_dir=models_dir, insightface_pack=models_dir / "insightface_det_500m")
    image = still("lin-manuel-miranda.png")
    in_image = _largest(stack.detect(image))
    crop = _cut(image, in_image.bbox)
    (face,) = stack.detect_photo(crop)
    cosine = float(_embedding(stack, image, in_image) @ _embedding(stack, crop, face))
    assert cosine > stack.embedder.same_person_cosine  # measured 0.998 (as on the padded image itself)


@pytest.mark.parametrize(("video", "index"), FOOTAGE_PEOPLE)
def test_footage_cut_at_the_face_box_is_found_and_is_the_same_face(stack, video, index):
    """A crop cut from a frame at the detected face box holds one face, embedded as in the frame."""
    frame = video_frames(MEDIA / "videos" / video, {index})[index]
    in_frame = _largest(stack.detect(frame))
    crop = _cut(frame, in_frame.bbox)
    if stack.embedder.name.endswith("arcface"):
        assert stack.detect(crop) == []  # SCRFD needs the padded retry on every such crop
    faces = stack.detect_photo(crop)
    assert len(faces) == 1, [f.bbox for f in faces]
    cosine = float(_embedding(stack, frame, in_frame) @ _embedding(stack, crop, faces[0]))
    assert cosine > stack.embedder.same_person_cosine  # measured ArcFace 0.87-0.93, dlib 0.99+


def test_every_face_of_a_two_person_frame_cut_at_its_box_is_found(stack):
    """cisco_two_people.mp4: a man and a woman; each crop gives one face, on its own side of the pair."""
    frame = video_frames(MEDIA / "videos" / "cisco_two_people.mp4", {4})[4]
    people = sorted(stack.detect(frame), key=lambda face: face.bbox[0])
    assert len(people) == 2
    crops = [_cut(frame, face.bbox) for face in people]
    found = [stack.detect_photo(crop) for crop in crops]
    assert [len(faces) for faces in found] == [1, 1]
    vectors = [_embedding(stack, crop, faces[0]) for crop, faces in zip(crops, found, strict=True)]
    in_frame = [_embedding(stack, frame, face) for face in people]
    threshold = stack.embedder.same_person_cosine
    assert float(vectors[0] @ in_frame[0]) > threshold and float(vectors[1] @ in_frame[1]) > threshold
    assert float(vectors[0] @ in_frame[1]) < float(vectors[0] @ in_frame[0])  # not the other person


@pytest.mark.parametrize(
    ("name", "num_faces"),
    [("obama.jpg", 1), ("obama2.jpg", 1), ("biden.jpg", 1), ("two_people.jpg", 2), ("obama_partial_face.jpg", 1)],
)
def test_photos_with_context_keep_their_face_count(stack, name, num_faces):
    from datakit.tools.photos import embed_photo

    assert len(embed_photo(STILLS / name, stack)) == num_faces


def test_a_photo_without_a_face_stays_without_one(stack, tmp_path):
    """The padded retry runs on a faceless image too, and must not invent a face there."""
    from datakit.tools.photos import NoFaceError, embed_photo

    frame = video_frames(MEDIA / "videos" / "no_face.mp4", {40})[40]
    assert stack.detect_photo(_cut(frame, (300, 100, 600, 400))) == []
    cv2.imwrite(str(tmp_path / "no_face.png"), frame)
    with pytest.raises(NoFaceError, match=r"no_face\.png"):
        embed_photo(tmp_path / "no_face.png", stack)
