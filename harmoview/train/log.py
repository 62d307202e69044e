"""Training metrics: one JSON line per logged step in `<out>/metrics.jsonl`, and TensorBoard when installed.

On resume the file is cut back to the checkpoint's step first, so a step is never logged twice. Counts of a
step (samples, reference views, dropped captions, skipped samples) are summed over the torchrun ranks
(`sum_over_ranks`, `sum_counters_over_ranks`), so the metrics and the summary count every rank's data.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist


def sum_over_ranks(counts: dict[str, int], device: torch.device) -> dict[str, int]:
    """Each count summed over all ranks in one all_reduce (the counts themselves in a single process).

    Every rank must pass the same keys (in any order).
    """
    if not dist.is_initialized():
        return dict(counts)
    keys = sorted(counts)
    t = torch.tensor([float(counts[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: round(float(v)) for k, v in zip(keys, t.tolist(), strict=True)}


def sum_counters_over_ranks(counter: Counter, device: torch.device) -> Counter:
    """A Counter with arbitrary keys (e.g. skip reasons) summed over all ranks.

    One all_reduce of the total first; the keys are gathered only when some rank counted something, which
    is rare (skipped samples), so a normal step costs one small collective.
    """
    if not dist.is_initialized():
        return Counter(counter)
    total = torch.tensor([float(sum(counter.values()))], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    if float(total) == 0:
        return Counter()
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(counter))
    summed: Counter = Counter()
    for part in gathered:
        summed.update(part)
    return summed


class MetricsLog:
    """Appends metric records of the main rank; other ranks hold a disabled log."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.path = Path(out) / "metrics.jsonl"
        self.enabled = enabled
        self._tensorboard = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(Path(out) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._tensorboard = None

    def truncate(self, step: int) -> None:
        """Drop records after `step` (written by a run that died before its next checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, **record: float | int | bool) -> None:
        """Append one metrics line (and the TensorBoard scalars) on the main rank."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tensorboard.add_scalar(f"train/{key}", value, record["step"])

    def read(self) -> list[dict]:
        """All records (for tests and reports)."""
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
