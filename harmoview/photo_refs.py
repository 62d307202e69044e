"""Reference photos -> view slots: detect the face with datakit's face stack, crop it as datakit crops its
reference views (`head_crop_jpeg`), estimate its yaw and bin it (`datakit.views.ViewBins`) into a slot.

`VIEW:PATH` puts a photo in a slot by hand (the pose is then not used to route it). A photo without a face,
or with several faces and no face index, is a ValueError naming the file. Two photos of one identity in one
slot: the larger face is kept.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from harmoview.model.config import VIEW_SLOTS

if TYPE_CHECKING:
    from datakit.faces import FaceStack
    from datakit.views import ViewBins


@dataclass(kw_only=True, slots=True)
class PhotoRef:
    """One photo given as a reference: `path`, or `view:path` to choose its slot by hand."""

    path: Path
    view: str | None = None
    """The slot chosen by hand; None = routed by the estimated yaw."""

    @classmethod
    def parse(cls, spec: str) -> PhotoRef:
        """`photo.jpg` or `left:photo.jpg` (a prefix that is not a view slot is part of the path)."""
        head, sep, tail = spec.partition(":")
        if sep and head in VIEW_SLOTS:
            return cls(path=Path(tail), view=head)
        if sep and head.lower() in {v.lower() for v in VIEW_SLOTS} | {"front", "profile"}:
            raise ValueError(f"--ref {spec}: unknown view {head!r}; use one of {', '.join(VIEW_SLOTS)}")
        return cls(path=Path(spec))


@dataclass(kw_only=True, slots=True)
class RoutedPhoto:
    """A reference photo's face crop and the slot it went to."""

    path: Path
    slot: str
    image: Image.Image
    """The head crop (RGB), as datakit crops reference views."""
    face_px: float
    yaw_deg: float | None
    chosen_by_hand: bool

    def describe(self) -> dict:
        """JSON-able provenance for the sidecar."""
        yaw = None if self.yaw_deg is None else round(float(self.yaw_deg), 1)
        return {"path": str(self.path), "slot": self.slot, "yaw_deg": yaw, "face_px": round(self.face_px, 1),
                "chosen_by_hand": self.chosen_by_hand}  # fmt: skip


def load_face_stack(models_dir: str | Path | None = None) -> FaceStack:
    """datakit's default face stack: YuNet + FSA-Net when its files are in `models_dir` (or
    $DATAKIT_MODELS_DIR), else the pip-only dlib fallback - the same choice `datakit build` makes."""
    from datakit.faces import build_face_stack

    return build_face_stack("auto", models_dir=models_dir)


def route_photo(
    ref: PhotoRef, stack: FaceStack, *, face: int | None = None, bins: ViewBins | None = None
) -> RoutedPhoto:
    """Detect, crop and route one photo. face: which face (0 = leftmost) when the photo shows several."""
    from datakit.faces.quality import head_crop_jpeg
    from datakit.views import ViewBins

    bins = bins or ViewBins()
    from datakit.tools.photos import read_photo_bgr

    frame = read_photo_bgr(ref.path)
    # left to right (--face N counts from the left); detect_photo also finds a face that fills a tight crop
    faces = sorted(stack.detect_photo(frame), key=lambda f: f.bbox[0])
    if not faces:
        raise ValueError(f"no face found in reference photo {ref.path} (face stack {stack.name})")
    if face is None and len(faces) > 1:
        raise ValueError(f"{len(faces)} faces in reference photo {ref.path}: choose one with --face N (0 = leftmost)")
    index = 0 if face is None else face
    if not 0 <= index < len(faces):
        raise ValueError(f"--face {index}: reference photo {ref.path} has {len(faces)} face(s)")
    chosen = faces[index]
    slot = ref.view or bins(chosen.yaw_deg)
    if slot is None:
        raise ValueError(f"no head pose for the face in {ref.path}: give its view by hand (VIEW:{ref.path})")
    jpeg, _, _ = head_crop_jpeg(frame, chosen.bbox)
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    return RoutedPhoto(path=ref.path, slot=slot, image=image, face_px=chosen.face_px, yaw_deg=chosen.yaw_deg,
                       chosen_by_hand=ref.view is not None)  # fmt: skip


def route_identities(
    identities: Sequence[Sequence[PhotoRef | str]], *, stack: FaceStack | None = None,
    models_dir: str | Path | None = None, face: int | None = None,
) -> list[dict[str, RoutedPhoto]]:  # fmt: skip
    """Per identity, its photos routed into slots; in a slot given twice the larger face wins (a slot chosen
    by hand wins over a routed one)."""
    stack = stack or load_face_stack(models_dir)
    result = []
    for photos in identities:
        slots: dict[str, RoutedPhoto] = {}
        for photo in photos:
            routed = route_photo(photo if isinstance(photo, PhotoRef) else PhotoRef.parse(photo), stack, face=face)
            old = slots.get(routed.slot)
            if old is None or (routed.chosen_by_hand, routed.face_px) > (old.chosen_by_hand, old.face_px):
                slots[routed.slot] = routed
        result.append({slot: slots[slot] for slot in VIEW_SLOTS if slot in slots})
    return result


def references_from_photos(
    identities: Sequence[Sequence[PhotoRef | str]], *, stack: FaceStack | None = None,
    models_dir: str | Path | None = None, face: int | None = None,
) -> list[dict[str, Image.Image]]:  # fmt: skip
    """Per identity {slot: head crop}: the `references` argument of `HarmoViewPipeline.__call__`."""
    routed = route_identities(identities, stack=stack, models_dir=models_dir, face=face)
    return [{slot: r.image for slot, r in views.items()} for views in routed]
