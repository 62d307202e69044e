"""harmoview's user photos (`generate --ref`, evaluation references) go through datakit's pixel budget: a
decompression bomb is refused from its header with an error naming it, before any decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from datakit.tools.photos import PhotoTooLargeError
from harmoview.evaluate.metrics import ReferenceError, embed_reference
from harmoview.photo_refs import PhotoRef, route_photo
from tests.conftest import STILLS
from tests.datakit.tools.images import write_png_bomb


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_png_bomb(tmp_path_factory.mktemp("photos") / "bomb.png", 12000)


def test_reference_photo_bomb_is_refused(face_stack, bomb: Path) -> None:
    with pytest.raises(PhotoTooLargeError, match=r"bomb\.png is 12000x12000 pixels"):
        route_photo(PhotoRef.parse(f"frontal:{bomb}"), face_stack)


def test_evaluation_reference_bomb_is_a_reference_error(face_stack, bomb: Path) -> None:
    with pytest.raises(ReferenceError, match=r"bomb\.png is 12000x12000 pixels"):
        embed_reference(face_stack, bomb)
    assert embed_reference(face_stack, STILLS / "obama.jpg").ndim == 1  # a real photo still embeds
