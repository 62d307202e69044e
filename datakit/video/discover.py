"""Find video files under a folder by their content, and give each a content-hash id.

A file is a candidate when its first bytes are those of a video container or elementary stream, or
when its name says video (so that a broken file named ``.mp4`` is reported, not silently skipped).
Still images are recognised and reported as such even under a video name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

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
    problem: str = ""  # for "unreadable": why (the OS error)


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
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_HASH_CHUNK))
        if size > 2 * _HASH_CHUNK:
            f.seek(size - _HASH_CHUNK)
            h.update(f.read(_HASH_CHUNK))
        elif size > _HASH_CHUNK:
            h.update(f.read())
    return "v_" + h.hexdigest()[:16]


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
                size = path.stat().st_size
                with open(path, "rb") as f:
                    kind = sniff(f.read(512)) if size else "empty"
                if kind != "video" and not named_video:
                    continue
                found.append(SourceFile(path, rel, content_id(path, size), size, kind))
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
