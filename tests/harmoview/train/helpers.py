"""Helpers of the training tests: tiny runs of the real trainer on the real shipped manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harmoview.model.encoders import EncoderPaths
from harmoview.testing import tiny_vit_layers
from harmoview.train.recipes import TrainConfig, apply_overrides, get_recipe
from harmoview.train.trainer import TrainRun

ROOT = Path(__file__).resolve().parents[3]
TEXT_LEN = 16


def tiny_config(recipe: str, **overrides: object) -> TrainConfig:
    """A recipe at CPU size: tiny buckets, no workers, a learning rate that moves a tiny model."""
    base = {"buckets": "tiny", "steps": 3, "num_workers": 0, "warmup_steps": 0, "lr": 1e-3, "checkpoint_every": 1000}
    return apply_overrides(get_recipe(recipe), base | overrides)


def tiny_run(manifests: Path, encoders: EncoderPaths, out: Path, init: Path | None, **kwargs: object) -> TrainRun:
    return TrainRun(
        manifests=[manifests], out=out, encoders=encoders, init=init, text_len=TEXT_LEN,
        vit_layers=tiny_vit_layers, progress=False, **kwargs,
    )  # fmt: skip


def losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if line]


def encoder_args(encoders: EncoderPaths) -> list[str]:
    """The encoder flags of `harmoview train` / `harmoview cache` for the tiny encoders."""
    return [
        "--vae", str(encoders.vae), "--text-encoder", str(encoders.text_encoder),
        "--tokenizer", str(encoders.tokenizer), "--vit", str(encoders.vit),
        "--vit-layers", *map(str, tiny_vit_layers), "--text-len", str(TEXT_LEN),
    ]  # fmt: skip


def cli_args(recipe: str, manifests: Path, encoders: EncoderPaths, out: Path, init: Path, overrides: Path) -> list:
    """`harmoview train` arguments of a tiny run; `overrides` is a JSON file of recipe overrides."""
    return [
        "train", "--recipe", recipe, "--manifests", str(manifests), "--out", str(out), "--init", str(init),
        *encoder_args(encoders), "--config", str(overrides), "--quiet",
    ]  # fmt: skip


def write_overrides(path: Path, **overrides: object) -> Path:
    base = {"buckets": "tiny", "steps": 3, "num_workers": 0, "warmup_steps": 0, "lr": 1e-3, "checkpoint_every": 1000}
    path.write_text(json.dumps(base | overrides))
    return path


def run_cli(args: list, *, torchrun: int = 0, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `harmoview` (under torchrun with `torchrun` processes when > 0) in a fresh interpreter."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)]
    launcher = launcher if torchrun else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "harmoview.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"harmoview failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc
