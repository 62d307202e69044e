"""The ``datakit`` command line: help, user errors without tracebacks, documented exit codes."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from datakit.cli import main, make_parser
from datakit.cli.flags import config_default
from datakit.config import BuildConfig
from tests.conftest import VIDEOS, run_datakit


def test_build_help_explains_the_command():
    result = run_datakit("build", "--help")
    assert result.returncode == 0
    for flag in ("--src", "--out", "--config", "--fps", "--workers", "--address", "--models-dir", "--overwrite"):
        assert flag in result.stdout
    assert "DATAKIT_MODELS_DIR" in result.stdout and "resume" in result.stdout


def test_missing_source_is_a_clear_error_not_a_traceback(tmp_path):
    result = run_datakit("build", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "source folder not found" in result.stderr and "Traceback" not in result.stderr


def test_missing_models_names_the_flag_and_variable(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    result = run_datakit(
        "build", "--src", str(VIDEOS), "--out", str(tmp_path / "out"), "--backend", "yunet", "--models-dir", str(empty)
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--models-dir" in result.stderr and "DATAKIT_MODELS_DIR" in result.stderr


def test_bad_command_line_exits_2():
    assert run_datakit("build", "--src").returncode == 2


def test_config_file_with_unknown_key_is_rejected(tmp_path):
    config = tmp_path / "cfg.toml"
    config.write_text("sample_fps = 2.0\nnot_a_setting = 1\n")
    result = run_datakit("build", "--src", str(VIDEOS), "--out", str(tmp_path / "o"), "--config", str(config))
    assert result.returncode == 2 and "not_a_setting" in result.stderr  # a bad setting is a usage error


# -- one convention for every command ------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its prog, e.g. "datakit models fetch"."""
    found = {parser.prog: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.update(_subparsers(child))
    return found


def test_every_command_has_a_runner_and_every_flag_has_help():
    commands = _subparsers(make_parser())
    assert {"datakit build", "datakit models fetch", "datakit query", "datakit leakage"} <= set(commands)
    for prog, parser in commands.items():
        if prog == "datakit":
            continue
        assert callable(parser.get_default("func")), prog
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help, f"{prog} {action.option_strings[0]} has no help"


def test_help_defaults_come_from_build_config():
    build = _subparsers(make_parser())["datakit build"]
    helps = {a.dest: a.help for a in build._actions}
    defaults = {f.name: f.default for f in fields(BuildConfig)}
    assert helps["sample_fps"].endswith(f"(default {defaults['sample_fps']:g})")
    for name in ("detect_max_side", "backend", "captioner", "caption_frames", "caption_max_pixels"):
        assert helps[name].endswith(f"(default {defaults[name]})"), name
    assert config_default("caption_timeout_s") == "120"


def test_manifests_is_one_flag_repeatable_where_a_command_takes_several_runs(tmp_path):
    parser = make_parser()
    a, b = tmp_path / "a", tmp_path / "b"
    for form in (["-m", str(a), str(b)], ["-m", str(a), "-m", str(b)], ["--manifests", str(a), "-m", str(b)]):
        assert parser.parse_args(["query", *form, "--identity", "x"]).manifests == [a, b]
        assert parser.parse_args(["leakage", *form, "--images", "x"]).manifests == [a, b]
    for command in (["report", "--out", "o"], ["split", "--eval-fraction", "0.1"], ["filter"], ["caption"]):
        assert parser.parse_args([command[0], "-m", str(a), *command[1:]]).manifests == a


def test_a_folder_that_is_not_a_run_is_the_same_one_line_error_everywhere(tmp_path, capsys):
    nope = str(tmp_path / "nope")
    for argv in (
        ["report", "-m", nope, "--out", str(tmp_path / "out")],
        ["split", "-m", nope, "--eval-fraction", "0.1"],
        ["query", "-m", nope, "--identity", "x"],
        ["leakage", "-m", nope, "--images", nope],
        ["filter", "-m", nope],
        ["caption", "-m", nope, "--captioner", "openai"],
    ):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert (
            err == f"datakit {argv[0]}: error: {nope} is not a datakit run (no run.json): pass the --out folder"
            " of a `datakit build`, or run `datakit build` first\n"
        ), err


def test_bad_command_lines_exit_2_and_are_explained(tmp_path, capsys):
    run = str(tmp_path)
    assert main(["filter", "-m", run, "--set", "filter_min_motion"]) == 2
    assert "not KEY=VALUE" in capsys.readouterr().err
    assert main(["query", "-m", run, "--identity", "x", "-k", "0"]) == 2
    assert "-k" in capsys.readouterr().err
    assert main(["query", "-m", run]) == 2  # one of --image / --identity / --embedding is required
    assert main(["--help"]) == 0


def test_interrupts_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    import datakit.tools.report

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datakit.tools.report, "build_report", interrupted)
    assert main(["report", "-m", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == "datakit report: interrupted\n"

    def bug(*args, **kwargs):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(datakit.tools.report, "build_report", bug)
    with pytest.raises(KeyError):
        main(["report", "-m", str(tmp_path), "--out", str(tmp_path / "o")])
