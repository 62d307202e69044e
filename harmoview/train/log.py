"""Training metrics: one JSON line per logged step in `<out>/metrics.jsonl`, and TensorBoard when installed.

On resume the file is cut back to the checkpoint's step first, so a step is never logged twice.
"""

from __future__ import annotations

import json
from pathlib import Path


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
