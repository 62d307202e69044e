"""Paths from manifest content: the one check before a string read from a run becomes a file path.

A run's tables are data, and data can be crafted: a ``video_path`` of ``../../etc/passwd`` or
``/etc/passwd`` joined to a source root would read (or, for a name that a tool writes, write) outside
that root. Every path built from a manifest string goes through :func:`inside_root`, which accepts only a
relative path without ``..`` whose folder, resolved, stays inside the resolved root.

Symbolic links follow what ``datakit build`` reads (:mod:`datakit.video.discover` walks the source without
entering folder links, and takes file links): the root itself may be a link (a source mounted elsewhere),
and so may the file (a folder of links to videos kept elsewhere is a source), but a folder link on the way
that leads out of the root is refused. A manifest cannot make links; only the owner of the root can.

Tools that *write* files for manifest rows never use manifest strings as names at all: they name their
files themselves (a counter or a hash), so they need no check.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

__all__ = ["UnsafePathError", "inside_root"]


class UnsafePathError(ValueError):
    """A manifest path that would leave its root (absolute, with ``..``, or resolving outside); the
    message names the path and the root."""


def inside_root(root: str | Path, relative: str | Path) -> Path:
    """``root / relative`` when ``relative`` is a plain relative path that stays inside ``root``.

    Raises :class:`UnsafePathError` for an empty or non-string path, a NUL byte, an absolute path, a ``..``
    component, or a path whose folder resolves (through folder links) outside the resolved root. The file
    need not exist. The returned path is the lexical join (not the resolved one), so messages show what the
    manifest says.
    """
    if not isinstance(relative, str | PurePosixPath | Path):
        raise UnsafePathError(f"path {relative!r} is not a string (root {root})")
    text = str(relative)
    if not text or "\x00" in text:
        raise UnsafePathError(f"path {text!r} is empty or holds a NUL byte (root {root})")
    pure = PurePosixPath(text)
    if pure.is_absolute() or text.startswith("\\"):
        raise UnsafePathError(f"path {text!r} is absolute: a manifest path must be relative to its root {root}")
    if ".." in pure.parts:
        raise UnsafePathError(f"path {text!r} has a '..' component: it would leave its root {root}")
    root = Path(root)
    joined = root / pure
    real_root = root.resolve()
    folder = joined.parent.resolve()  # strict=False: a missing file is the reader's error, not this one
    if not folder.is_relative_to(real_root):
        raise UnsafePathError(
            f"path {text!r} is in {folder}, outside its root {real_root} (through a link to a folder elsewhere)"
        )
    return joined
