"""Exports carry the encoder settings they were trained with; `generate` and the next stage's `--init` refuse
other ones, naming the setting, and the `generate` sidecar records them."""

from __future__ import annotations

import json

import pytest

from harmoview.cli import main
from harmoview.model.weights import read_export_encoders
from harmoview.pipeline import sidecar_path
from harmoview.testing import tiny_vit_layers
from harmoview.train.trainer import train
from tests.harmoview.train.helpers import TEXT_LEN, cli_args, encoder_args, tiny_config, tiny_run, write_overrides


@pytest.fixture(scope="module")
def stage1_out(shipped_run, tiny_encoders, tiny_init, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    train(tiny_config("pvc-stage1", steps=1), tiny_run(shipped_run, tiny_encoders, out, tiny_init))
    return out


def _generate(ckpt, encoders, out, *extra: str) -> list[str]:
    sampling = ["--prompt", "a man talks", "--frames", "5", "--height", "32", "--width", "48", "--steps", "1",
                "--sampler", "euler", "--quiet", "--device", "cpu"]  # fmt: skip
    return ["generate", "--ckpt", str(ckpt), *encoder_args(encoders), *extra, *sampling, "--out", str(out)]


def test_export_records_the_encoder_settings(stage1_out):
    record = read_export_encoders(stage1_out / "final")
    assert record["text_len"] == TEXT_LEN and record["vit_layers"] == list(tiny_vit_layers)
    assert set(record["files"]) == {"vae", "text_encoder", "tokenizer", "vit"} and all(record["files"].values())


def test_generate_refuses_other_vit_layers_and_records_the_encoders(stage1_out, tiny_encoders, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    assert main([*_generate(stage1_out, tiny_encoders, bad), "--vit-layers", "1", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "vit_layers: trained with [0, 1], this run uses [1, 0]" in err, err
    assert not bad.exists()
    assert main([*_generate(stage1_out, tiny_encoders, bad), "--text-len", "8"]) == 1
    assert "text_len: trained with 16, this run uses 8" in capsys.readouterr().err

    good = tmp_path / "good.mp4"
    assert main(_generate(stage1_out, tiny_encoders, good)) == 0
    record = json.loads(sidecar_path(good).read_text())["encoders"]
    assert record["vit_layers"] == list(tiny_vit_layers) and record["text_len"] == TEXT_LEN
    assert record["files"] == read_export_encoders(stage1_out / "final")["files"]
    assert record["paths"]["vit"] == str(tiny_encoders.vit)


def test_next_stage_refuses_an_init_trained_with_other_vit_layers(
    stage1_out, shipped_run, tiny_encoders, tmp_path, capsys
):
    overrides = write_overrides(tmp_path / "o.json", steps=1)
    args = cli_args("pvc-stage2", shipped_run, tiny_encoders, tmp_path / "out", stage1_out, overrides)
    assert main([*args, "--vit-layers", "1", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--init" in err and "vit_layers" in err and "\n" not in err
