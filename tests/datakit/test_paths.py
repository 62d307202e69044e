"""`datakit.paths.inside_root`: manifest strings become paths only inside their root."""

from __future__ import annotations

from pathlib import Path

import pytest

from datakit.paths import UnsafePathError, inside_root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    real = tmp_path / "videos"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "a.mp4").write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "outside.mp4").write_bytes(b"x")
    (real / "escape").symlink_to(tmp_path / "elsewhere")  # a folder link inside the root that leads out
    (real / "farmed.mp4").symlink_to(tmp_path / "elsewhere" / "outside.mp4")  # a file link, as discovery takes
    (real / "inner.mp4").symlink_to(real / "sub" / "a.mp4")  # a link that stays inside
    return real


def test_plain_relative_paths_are_joined(root: Path) -> None:
    assert inside_root(root, "sub/a.mp4") == root / "sub" / "a.mp4"
    assert inside_root(root, "not/yet/there.mp4") == root / "not" / "yet" / "there.mp4"  # missing: reader's error
    assert inside_root(root, "inner.mp4") == root / "inner.mp4"
    assert inside_root(root, "farmed.mp4") == root / "farmed.mp4"  # a folder of links to videos is a source
    assert inside_root(root, "./sub/a.mp4").is_file()


@pytest.mark.parametrize(
    ("relative", "why"),
    [
        ("../elsewhere/outside.mp4", r"'\.\.'"),
        ("sub/../../elsewhere/outside.mp4", r"'\.\.'"),
        ("/etc/passwd", "absolute"),
        ("//etc/passwd", "absolute"),
        ("", "empty"),
        ("a\x00b.mp4", "NUL"),
        ("escape/outside.mp4", "outside its root"),
        ("escape/not/there.mp4", "outside its root"),
    ],
)
def test_paths_that_leave_the_root_are_refused(root: Path, relative: str, why: str) -> None:
    with pytest.raises(UnsafePathError, match=why) as info:
        inside_root(root, relative)
    assert isinstance(info.value, ValueError)
    if relative and "\x00" not in relative:
        assert repr(relative) in str(info.value)  # the message names the path


def test_non_strings_are_refused(root: Path) -> None:
    with pytest.raises(UnsafePathError, match="not a string"):
        inside_root(root, None)  # type: ignore[arg-type]


def test_a_symlinked_root_is_fine(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "mounted"
    link.symlink_to(root)
    assert inside_root(link, "sub/a.mp4") == link / "sub" / "a.mp4"
    with pytest.raises(UnsafePathError):
        inside_root(link, "escape/outside.mp4")
