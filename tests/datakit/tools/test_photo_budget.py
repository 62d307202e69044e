"""User photos are size-checked from their header before any pixel is decoded: a decompression bomb is a
one-line error naming the file and its size; real photos read as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from datakit.tools.photos import MAX_PHOTO_PIXELS, PhotoTooLargeError, open_image, read_photo_bgr
from tests.conftest import STILLS, run_datakit
from tests.datakit.tools.images import write_png_bomb


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_png_bomb(tmp_path_factory.mktemp("photos") / "bomb.png", 12000)


def test_bomb_is_refused_naming_file_and_size(bomb: Path) -> None:
    assert bomb.stat().st_size < 1_000_000 and MAX_PHOTO_PIXELS < 12000 * 12000
    with pytest.raises(PhotoTooLargeError, match=r"bomb\.png is 12000x12000 pixels \(144 MP\).*64 MP") as info:
        read_photo_bgr(bomb)
    assert isinstance(info.value, ValueError)  # the CLIs' one-line user errors


def test_bomb_beyond_pillows_own_limit_is_the_same_error(tmp_path: Path) -> None:
    huge = write_png_bomb(tmp_path / "huge.png", 20000)  # 400 MP: Pillow itself raises in open()
    with pytest.raises(PhotoTooLargeError, match=r"huge\.png"):
        read_photo_bgr(huge)


def test_encoded_bytes_get_the_same_check(bomb: Path) -> None:
    with pytest.raises(PhotoTooLargeError, match="reference crop is 12000x12000"):
        open_image(bomb.read_bytes(), "reference crop")
    with open_image((STILLS / "obama.jpg").read_bytes()) as image:
        assert image.size[0] * image.size[1] <= MAX_PHOTO_PIXELS


def test_real_photos_still_read() -> None:
    bgr = read_photo_bgr(STILLS / "obama.jpg")
    assert bgr.ndim == 3 and bgr.shape[2] == 3 and max(bgr.shape[:2]) <= 1280


def test_query_with_a_bomb_is_a_one_line_error(shipped_run: Path, bomb: Path) -> None:
    result = run_datakit("query", "-m", str(shipped_run), "--image", str(bomb))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bomb.png is 12000x12000 pixels" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
