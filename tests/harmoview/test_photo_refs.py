"""`harmoview.photo_refs`: reference photos -> view slots with datakit's face stack, on real photos from
../shared/media/stills and a labelled frame of the Hamilton close-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from harmoview.photo_refs import PhotoRef, load_face_stack, references_from_photos, route_identities, route_photo
from tests.conftest import SHARED, STILLS


def test_frontal_photo_routes_to_frontal(face_stack):
    obama = route_photo(PhotoRef.parse(str(STILLS / "obama.jpg")), face_stack)
    assert obama.slot == "frontal" and abs(obama.yaw_deg) < 20
    # alex-lacamoire.png is a near-frontal portrait (yaw ~ -14 deg): it lands in frontal too
    assert route_photo(PhotoRef.parse(str(STILLS / "alex-lacamoire.png")), face_stack).slot == "frontal"
    biden = route_photo(PhotoRef.parse(str(STILLS / "biden.jpg")), face_stack)  # 2204 px tall: shrunk for detection
    assert biden.slot == "frontal" and max(biden.image.size) <= 256


def test_fallback_stack_without_models_dir(monkeypatch):
    """No models directory: datakit's pip-only dlib stack, the same choice `datakit build` makes."""
    if not STILLS.is_dir():
        pytest.skip(f"shared media not found at {SHARED}")
    monkeypatch.delenv("DATAKIT_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(SHARED / "no-such-cache"))  # a user's fetched models must not count
    fallback = load_face_stack(None)
    assert fallback.name.startswith("dlib")
    assert route_photo(PhotoRef(path=STILLS / "obama.jpg"), fallback).slot == "frontal"


def test_face_index_and_profile_routing(face_stack, hamilton_frame):
    ref = PhotoRef.parse(str(hamilton_frame))
    with pytest.raises(ValueError, match=r"2 faces in reference photo .*hamilton30\.png.*--face"):
        route_photo(ref, face_stack)
    profile = route_photo(ref, face_stack, face=1)  # the close-up, right of the audience face
    assert profile.slot == "left_profile" and profile.yaw_deg > 60
    assert route_photo(ref, face_stack, face=0).slot == "frontal"
    with pytest.raises(ValueError, match="--face 2"):
        route_photo(ref, face_stack, face=2)


def test_view_override_and_best_face_per_slot(face_stack):
    assert PhotoRef.parse("left:a.jpg") == PhotoRef(path=Path("a.jpg"), view="left")
    assert PhotoRef.parse("dir:with/colon.jpg").view is None
    with pytest.raises(ValueError, match="unknown view"):
        PhotoRef.parse("Front:a.jpg")
    obama, lin = STILLS / "obama.jpg", STILLS / "lin-manuel-miranda.png"  # face_px ~ 273 and ~ 314
    routed = route_identities([[str(obama), str(lin)], [f"right:{obama}"]], stack=face_stack)
    assert list(routed[0]) == ["frontal"] and routed[0]["frontal"].path == lin  # the larger face is kept
    assert list(routed[1]) == ["right"] and routed[1]["right"].chosen_by_hand
    images = references_from_photos([[str(obama)]], stack=face_stack)
    assert list(images[0]) == ["frontal"] and isinstance(images[0]["frontal"], Image.Image)


def test_photo_errors_name_the_file(face_stack, tmp_path):
    grey = tmp_path / "grey.jpg"
    Image.new("RGB", (320, 240), (128, 128, 128)).save(grey)
    with pytest.raises(ValueError, match=r"no face found in reference photo .*grey\.jpg"):
        route_photo(PhotoRef(path=grey), face_stack)
    with pytest.raises(ValueError, match=r"2 faces in reference photo .*two_people\.jpg"):
        route_photo(PhotoRef(path=STILLS / "two_people.jpg"), face_stack)
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        route_photo(PhotoRef(path=tmp_path / "missing.jpg"), face_stack)


def test_tight_crop_reference_with_the_arcface_pack(tmp_path):
    """A reference photo that the face fills (cut at the face box): SCRFD alone finds nothing there; the photo
    path pads it, so `generate --ref` routes it and evaluation embeds it like the uncut photo."""
    pytest.importorskip("insightface")
    import cv2

    from datakit.faces import build_face_stack
    from harmoview.evaluate.metrics import embed_reference
    from tests.conftest import MODELS

    stack = build_face_stack("insightface", models_dir=MODELS, insightface_pack=MODELS / "insightface_sc_int8")
    image = cv2.imread(str(STILLS / "lin-manuel-miranda.png"))
    x0, y0, x1, y1 = (round(v) for v in stack.detect(image)[0].bbox)
    crop_path = tmp_path / "miranda_tight.png"
    cv2.imwrite(str(crop_path), image[max(y0, 0) : y1, max(x0, 0) : x1])
    assert stack.detect(cv2.imread(str(crop_path))) == []
    routed = route_photo(PhotoRef.parse(str(crop_path)), stack)
    assert routed.slot == "frontal" and routed.face_px > 200
    cosine = float(embed_reference(stack, crop_path) @ embed_reference(stack, STILLS / "lin-manuel-miranda.png"))
    assert cosine > 0.8  # measured 0.91: the same face, with and without its surroundings
