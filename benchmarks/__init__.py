"""Benchmarks: scripts that print measurements side by side (results in BENCHMARKS.md)."""

from __future__ import annotations

import io
import sys
import time


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


def median_seconds(run, *, cuda: bool, warmup: int, steps: int) -> float:
    """Median wall time of ``run()`` over ``steps`` calls after ``warmup`` untimed ones; on a GPU each call is
    synchronised and the peak-memory counter restarts with the first timed call."""
    import torch

    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
            if i == warmup:
                torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[warmup:])[steps // 2]
