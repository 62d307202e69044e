"""Benchmarks: scripts that print measurements side by side (results in BENCHMARKS.md)."""

from __future__ import annotations

import io
import sys


class Tee(io.TextIOBase):
    """A stdout that also keeps what was printed (``text``), for scripts that write their report to a file."""

    def __init__(self) -> None:
        self._kept = io.StringIO()

    def write(self, s: str) -> int:
        sys.__stdout__.write(s)
        sys.__stdout__.flush()
        return self._kept.write(s)

    @property
    def text(self) -> str:
        return self._kept.getvalue()
