"""Find video files under a folder by their content, and give each a content-hash id.

A file is a candidate when its first bytes are those of a video container or elementary stream, or
when its name says video (so that a broken file named ``.mp4`` is reported, not silently skipped).
Still images are recognised and reported as such even under a video name. A file that is not a regular
file (a FIFO, socket or device, or a symbolic link to one) is never opened, since reading a FIFO blocks
until someone writes to it: it is reported as ``unreadable`` ("not a regular file (fifo)"), whatever its name.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

VIDEO_SUFFIXES = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".wmv",
        ".asf",
        ".flv",
        ".ts",
        ".mts",
        ".m2ts",
        ".mpg",
        ".mpeg",
        ".3gp",
        ".3g2",
        ".ogv",
        ".h264",
        ".264",
        ".h265",
        ".265",
        ".hevc",
        ".y4m",
        ".mxf",
        ".vob",
    ]
)
_HASH_CHUNK = 8 << 20  # bytes hashed at the head and at the tail of a file


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One candidate file: where it is, what its bytes look like, and its id."""

    path: Path  # absolute
    rel_path: str  # relative to the source root, POSIX separators
    video_id: str
    size_bytes: int
    kind: str  # "video", "image:<fmt>", "unknown", "empty", "unreadable"
    problem: str = ""  # for "unreadable": why ("<error type>: <reason>", e.g. the OS error)


def sniff(head: bytes) -> str:
    """Classify a file by its first bytes: 'video', 'image:<fmt>' or 'unknown'."""
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "video"  # ISO BMFF / QuickTime
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video"  # Matroska / WebM
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    if head.startswith((b"FLV", b"OggS", b"\x30\x26\xb2\x75", b"\x00\x00\x01\xba", b"YUV4MPEG2")):
        return "video"  # FLV, Ogg, ASF/WMV, MPEG-PS, Y4M
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "video"  # MPEG-TS
    if head.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")):
        return "video"  # H.264/H.265 Annex B elementary stream
    if head.startswith(b"\xff\xd8\xff"):
        return "image:jpeg"
    if head.startswith(b"\x89PNG"):
        return "image:png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image:gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image:webp"
    if head.startswith(b"BM"):
        return "image:bmp"
    return "unknown"


def content_id(path: Path, size: int) -> str:
    """``v_`` + 16 hex digits of SHA-256 over the size, the first and the last 8 MiB.

    Sampling keeps hashing O(1) in file size; size plus 16 MiB of compressed video collide only for
    files that are, in practice, the same video.
    """
    with _open_regular(path) as f:
        return _hash_open(f, size)


def _hash_open(f: BinaryIO, size: int) -> str:
    """:func:`content_id` of a file open for reading, whatever its position."""
    f.seek(0)
    h = hashlib.sha256(str(size).encode())
    h.update(f.read(_HASH_CHUNK))
    if size > 2 * _HASH_CHUNK:
        f.seek(size - _HASH_CHUNK)
        h.update(f.read(_HASH_CHUNK))
    elif size > _HASH_CHUNK:
        h.update(f.read())
    return "v_" + h.hexdigest()[:16]


class NotARegularFileError(OSError):
    """A FIFO, socket or device where a file was expected: never read (a FIFO would block)."""


def _special_kind(mode: int) -> str:
    """What a non-regular file is, from its ``st_mode``, as the error row says it."""
    kinds = ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"))
    kinds += ((stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _check_regular(mode: int, path: Path) -> None:
    if not stat.S_ISREG(mode):
        link = "symbolic link to a " if path.is_symlink() else ""
        raise NotARegularFileError(f"not a regular file ({link}{_special_kind(mode)})")


def _open_regular(path: Path) -> BinaryIO:
    """Open a regular file (symbolic links followed) for reading; :class:`NotARegularFileError` otherwise.

    Checked by ``stat`` before opening (opening a device can have effects) and again on the open file, which
    was opened non-blocking so that a file swapped for a FIFO in between cannot hang us either."""
    _check_regular(os.stat(path).st_mode, path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        _check_regular(os.fstat(fd).st_mode, path)
        os.set_blocking(fd, True)  # a regular file after all: plain reads
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def path_id(rel_path: str) -> str:
    """Id of a file known only by its path (unreadable, or a duplicate of another file's content)."""
    return "p_" + hashlib.sha256(rel_path.encode()).hexdigest()[:16]


def discover(src: Path) -> list[SourceFile]:
    """All candidate video files under ``src`` (recursively), sorted by relative path."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    found: list[SourceFile] = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root, name)
            rel = path.relative_to(src).as_posix()
            named_video = path.suffix.lower() in VIDEO_SUFFIXES
            try:
                with _open_regular(path) as f:
                    size = os.fstat(f.fileno()).st_size
                    kind = sniff(f.read(512)) if size else "empty"
                    if kind != "video" and not named_video:
                        continue
                    found.append(SourceFile(path, rel, _hash_open(f, size), size, kind))
            except NotARegularFileError as exc:  # reported whatever its name: it may well be a video's pipe
                found.append(SourceFile(path, rel, path_id(rel), -1, "unreadable", f"NotARegularFile: {exc}"))
            except OSError as exc:
                if named_video:
                    why = "broken symbolic link" if path.is_symlink() and not path.exists() else exc.strerror
                    problem = f"{type(exc).__name__}: {why or exc}"
                    found.append(SourceFile(path, rel, path_id(rel), -1, "unreadable", problem))
    return found


def dedupe(sources: list[SourceFile]) -> tuple[list[SourceFile], list[tuple[SourceFile, SourceFile]]]:
    """The files to process (the first of each content id), and every byte-identical copy paired with the
    file processed in its place."""
    first: dict[str, SourceFile] = {}
    copies: list[tuple[SourceFile, SourceFile]] = []
    for s in sources:
        if s.video_id in first:
            copies.append((s, first[s.video_id]))
        else:
            first[s.video_id] = s
    return list(first.values()), copies
