"""The ``datakit`` command line: help, user errors without tracebacks, documented exit codes."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import VIDEOS


def _datakit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datakit.cli", *args], capture_output=True, text=True, timeout=120)


def test_build_help_explains_the_command():
    result = _datakit("build", "--help")
    assert result.returncode == 0
    for flag in ("--src", "--out", "--config", "--fps", "--workers", "--address", "--models-dir", "--overwrite"):
        assert flag in result.stdout
    assert "DATAKIT_MODELS_DIR" in result.stdout and "resume" in result.stdout


def test_missing_source_is_a_clear_error_not_a_traceback(tmp_path):
    result = _datakit("build", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "source folder not found" in result.stderr and "Traceback" not in result.stderr


def test_missing_models_names_the_flag_and_variable(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    result = _datakit(
        "build", "--src", str(VIDEOS), "--out", str(tmp_path / "out"), "--backend", "yunet", "--models-dir", str(empty)
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--models-dir" in result.stderr and "DATAKIT_MODELS_DIR" in result.stderr


def test_bad_command_line_exits_2():
    assert _datakit("build", "--src").returncode == 2


def test_config_file_with_unknown_key_is_rejected(tmp_path):
    config = tmp_path / "cfg.toml"
    config.write_text("sample_fps = 2.0\nnot_a_setting = 1\n")
    result = _datakit("build", "--src", str(VIDEOS), "--out", str(tmp_path / "o"), "--config", str(config))
    assert result.returncode == 1 and "not_a_setting" in result.stderr
