"""`harmoview generate` end to end on the tiny checkpoint and encoders, with real photos."""

from __future__ import annotations

import json

from harmoview.cli import build_parser, main
from harmoview.pipeline import sidecar_path
from harmoview.testing import tiny_vit_layers
from tests.conftest import MODELS, STILLS
from tests.harmoview.helpers import decode_mp4


def test_identity_groups_parse():
    args = build_parser().parse_args(["generate", "--ckpt", "c", "--prompt", "p", "--out", "o.mp4", "--ref", "a.jpg",
                                      "--ref", "left:b.jpg", "--identity", "--ref", "c.jpg"])  # fmt: skip
    assert args.identities == [["a.jpg", "left:b.jpg"], ["c.jpg"]]


def test_cli_end_to_end(face_stack, tiny_ckpt, tiny_encoders, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    encoders = ["--vae", str(tiny_encoders.vae), "--text-encoder", str(tiny_encoders.text_encoder),
                "--tokenizer", str(tiny_encoders.tokenizer), "--vit", str(tiny_encoders.vit),
                "--vit-layers", *map(str, tiny_vit_layers), "--text-len", "16"]  # fmt: skip
    sampling = ["--prompt", "a man talks", "--frames", "5", "--height", "32", "--width", "48", "--steps", "2",
                "--sampler", "euler", "--seed", "7", "--quiet", "--device", "cpu"]  # fmt: skip
    common = ["generate", "--ckpt", str(tiny_ckpt), *encoders, *sampling, "--models-dir", str(MODELS)]
    refs = ["--ref", str(STILLS / "obama.jpg"), "--identity", "--ref", f"left:{STILLS / 'biden.jpg'}"]
    assert main([*common, *refs, "--out", str(out)]) == 0
    assert decode_mp4(out).shape == (5, 32, 48, 3)
    record = json.loads(sidecar_path(out).read_text())
    assert [list(views) for views in record["references"]] == [["frontal"], ["left"]]
    assert record["references"][0]["frontal"]["path"].endswith("obama.jpg")
    assert record["seed"] == 7 and record["prompt"] == "a man talks" and record["face_stack"].startswith("yunet")

    capsys.readouterr()
    assert main([*common, "--ref", str(STILLS / "two_people.jpg"), "--out", str(tmp_path / "bad.mp4")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("harmoview generate: error: ") and "two_people.jpg" in err
    assert not (tmp_path / "bad.mp4").exists()
    assert main(["generate", "--ckpt", str(tmp_path / "nope"), *common[3:], "--out", str(out)]) == 1
    assert "--ckpt" in capsys.readouterr().err
