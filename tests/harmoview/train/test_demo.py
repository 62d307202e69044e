"""The README's no-weights demo trains: random preset weights have a head, so stage 1's gradients are not 0."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from harmoview import read_state_dict
from harmoview.cli import main
from harmoview.model.encoders import Encoders
from harmoview.testing import tiny_vit_layers
from harmoview.train.trainable import load_initial_model
from harmoview.train.trainer import train
from tests.conftest import STILLS
from tests.harmoview.train.helpers import TEXT_LEN, encoder_args, losses, tiny_config, tiny_run


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def test_preset_weights_get_a_random_head_and_loaded_weights_keep_theirs(tiny_encoders, tiny_init):
    encoders = Encoders.load(tiny_encoders, text_len=TEXT_LEN, vit_layers=tiny_vit_layers)
    head = load_initial_model(None, "tiny", encoders).head.head.weight  # (p * C_out, D)
    fan_out, fan_in = head.shape
    assert 0.5 < float(head.std()) / (2 / (fan_in + fan_out)) ** 0.5 < 1.5  # Xavier, like every other linear
    loaded = load_initial_model(tiny_init, None, encoders)
    assert torch.equal(loaded.head.head.weight, read_state_dict(tiny_init)["proj_out.weight"])


def test_stage_1_from_random_preset_weights_has_gradients(shipped_run, tiny_encoders, tmp_path):
    summary = train(
        tiny_config("pvc-stage1", steps=3), tiny_run(shipped_run, tiny_encoders, tmp_path, None, preset="tiny")
    )
    assert summary.steps == 3
    assert all(r["grad_norm"] > 0 for r in _records(tmp_path)), "stage 1 from --preset trains nothing"


def demo_commands(manifests: Path, encoders: list[str], out: Path) -> list[list[str]]:
    """The README's no-weights chain (stage 1 from random weights -> 2 -> 3 -> 4 -> generate), as CLI args."""
    config = out / "tiny.json"
    config.write_text(json.dumps({"warmup_steps": 0}))
    common = ["--manifests", str(manifests), "--buckets", "tiny", "--lr", "3e-3", "--config", str(config), "--quiet"]
    stages = [["train", "--recipe", "pvc-stage1", *common, "--preset", "tiny", *encoders, "--steps", "60",
               "--out", str(out / "s1")]]  # fmt: skip
    for i in (2, 3, 4):
        stages.append(["train", "--recipe", f"pvc-stage{i}", *common, "--init", str(out / f"s{i - 1}"), *encoders,
                       "--steps", "20", "--out", str(out / f"s{i}")])  # fmt: skip
    generate = [
        "generate", "--ckpt", str(out / "s4"), *encoders, "--prompt", "a man speaks at a podium",
        "--ref", str(STILLS / "obama.jpg"), "--frames", "5", "--height", "32", "--width", "32", "--steps", "4",
        "--out", str(out / "tiny.mp4"), "--quiet",
    ]  # fmt: skip
    return [*stages, generate]


@pytest.mark.slow
def test_readme_demo_chain_trains_and_generates(shipped_run, tiny_encoders, face_stack, tmp_path, monkeypatch):
    from tests.conftest import MODELS

    monkeypatch.setenv("DATAKIT_MODELS_DIR", str(MODELS))
    *stages, generate = demo_commands(shipped_run, encoder_args(tiny_encoders), tmp_path)
    for args in stages:
        assert main(args) == 0
    first = _records(tmp_path / "s1")
    assert len(first) == 60 and all(r["grad_norm"] > 0 for r in first), "stage 1 must have gradients"
    history = losses(tmp_path / "s1")
    start, end = statistics.mean(history[:15]), statistics.mean(history[-15:])
    assert start > 1.1 * end, f"stage 1's loss went from {start:.3f} to {end:.3f} only"
    assert main(generate) == 0
    assert (tmp_path / "tiny.mp4").stat().st_size > 0
