"""The `harmoview` command line: one dispatch style, one error path, every flag with help, API defaults."""

from __future__ import annotations

import argparse
import re

import pytest

from harmoview.cli import build_parser, main
from harmoview.evaluate.runner import EvalConfig
from harmoview.model.encoders import Encoders
from harmoview.pipeline import HarmoViewPipeline


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_cli_info_prints_counts(capsys):
    assert main(["info", "--preset", "wan2.1-t2v-1.3b"]) == 0
    out = capsys.readouterr().out
    assert "backbone 1,418,996,800" in out and '"dim": 1536' in out


def test_cli_train_help_lists_the_four_stages(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for stage in ("pvc-stage1", "pvc-stage2", "pvc-stage2-lora", "pvc-stage3", "pvc-stage4"):
        assert stage in out
    assert "trains harmoview" in out and "trains lora" in out


def test_cli_train_without_initial_weights_is_a_clear_error(tmp_path, shipped_run, capsys):
    args = ["train", "--recipe", "pvc-stage1", "--manifests", str(shipped_run), "--out", str(tmp_path / "o")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("harmoview train: error: ")
    assert "--vae" in err or "--init" in err  # the first missing input is named with its flag


def test_user_errors_exit_1_and_usage_errors_exit_2(tmp_path, capsys):
    assert main(["cases", "--manifests", str(tmp_path / "nope"), "--identities", str(tmp_path / "ids.txt"),
                 "--out", str(tmp_path / "cases.jsonl")]) == 1  # fmt: skip
    assert capsys.readouterr().err.startswith("harmoview cases: error: ")
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", "p"])  # --ckpt and --out missing
    assert exit_info.value.code == 2


def test_every_command_dispatches_through_func_and_every_flag_has_help():
    for name, sub in _subparsers(build_parser()).items():
        assert callable(sub.get_default("func")), name
        for action in sub._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help, f"harmoview {name} {action.option_strings[0]} has no help"


def test_help_defaults_come_from_the_api():
    subs = _subparsers(build_parser())
    generate = subs["generate"].parse_args(["--ckpt", "c", "--prompt", "p", "--out", "o.mp4"])
    call = {"frames": "num_frames", "height": "height", "width": "width", "steps": "steps", "sampler": "sampler",
            "shift": "shift", "ref_scale": "ref_scale", "text_scale": "text_scale", "seed": "seed",
            "negative_prompt": "negative_prompt"}  # fmt: skip
    defaults = HarmoViewPipeline.__call__.__kwdefaults__
    assert {flag: getattr(generate, flag) for flag in call} == {flag: defaults[name] for flag, name in call.items()}
    assert generate.fps == HarmoViewPipeline.save.__defaults__[0]
    load = Encoders.load.__func__.__kwdefaults__
    assert generate.text_len == load["text_len"] and tuple(generate.vit_layers) == load["vit_layers"]
    evaluate = subs["evaluate"].parse_args(["--cases", "c", "--videos", "v", "--out", "o"])
    assert (evaluate.sample_fps, evaluate.max_frames) == (EvalConfig().sample_fps, EvalConfig().max_frames)
    assert "sampling steps (default 50)" in re.sub(r"\s+", " ", subs["generate"].format_help())


def test_an_os_error_is_one_line_naming_the_path(tmp_path, shipped_run, capsys):
    import pyarrow.parquet as pq

    identity = pq.read_table(shipped_run / "reference_views", columns=["identity_id"])["identity_id"][0].as_py()
    (tmp_path / "ids.txt").write_text(identity + "\n")
    (tmp_path / "file").write_text("not a folder")
    images = tmp_path / "file" / "refs"  # under a file: NotADirectoryError, an OSError that was a traceback
    args = ["cases", "-m", str(shipped_run), "--identities", str(tmp_path / "ids.txt"), "--out", str(tmp_path / "c")]
    assert main([*args, "--images-dir", str(images)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("harmoview cases: error: Not a directory: ") and str(tmp_path / "file") in err
    assert "\n" not in err and not (tmp_path / "c").exists()


def test_a_count_flag_refuses_zero_as_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", "p", "--ckpt", "c", "--out", "o", "--text-len", "0"])
    assert exit_info.value.code == 2
    assert "--text-len: must be an integer >= 1 (got 0)" in capsys.readouterr().err
