"""BuildConfig validation: every field has its type, numbers are finite and in range, one error naming the field."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from datakit.config import LIMITS, BuildConfig, ConfigError, _kinds
from datakit.store import RunDir
from datakit.views import ViewBins

BASE = {"src": ".", "out": "."}


def _numeric_fields() -> dict[str, tuple[type, bool]]:
    return {name: kind for name, kind in _kinds().items() if kind[0] in (int, float)}


def test_every_numeric_field_has_a_range_and_every_range_a_field():
    view_edges = {f"view_bins.{f.name}" for f in dataclasses.fields(ViewBins)}
    assert set(LIMITS) == set(_numeric_fields()) | view_edges


def test_the_defaults_are_valid_and_values_are_normalised():
    cfg = BuildConfig(src="videos", out="run", sample_fps=2, workers=3.0, view_bins={"frontal_max_deg": 15})
    assert cfg.src == Path("videos") and cfg.out == Path("run")
    assert cfg.sample_fps == 2.0 and isinstance(cfg.sample_fps, float)
    assert cfg.workers == 3 and isinstance(cfg.workers, int)
    assert cfg.view_bins == ViewBins(frontal_max_deg=15.0, profile_min_deg=60.0)


@pytest.mark.parametrize("name", sorted(_numeric_fields()))
def test_every_numeric_field_refuses_non_finite_wrong_type_and_null(name):
    _, optional = _kinds()[name]
    for bad in (math.nan, math.inf, -math.inf, "ten", True, [1], {"deep": {"er": 1}}, *([] if optional else [None])):
        with pytest.raises(ConfigError) as caught:
            BuildConfig(**BASE, **{name: bad})
        message = str(caught.value)
        assert message.startswith(f"config field {name}: must be ") and "(got " in message, message
        assert caught.value.field == name
    if optional:
        assert getattr(BuildConfig(**BASE, **{name: None}), name) is None


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"sample_fps": math.nan}, "config field sample_fps: must be a finite number > 0 (got nan)"),
        ({"sample_fps": -1.0}, "config field sample_fps: must be a finite number > 0 (got -1.0)"),
        ({"max_clip_s": "ten"}, "config field max_clip_s: must be a finite number > 0 (got 'ten')"),
        ({"workers": 0}, "config field workers: must be an integer >= 1 or null (got 0)"),
        ({"workers": 2.5}, "config field workers: must be an integer >= 1 or null (got 2.5)"),
        (
            {"workers": 10**12},
            "config field workers: must be an integer in [1, 2147483647] or null (got 1000000000000)",
        ),
        ({"track_iou": 1.5}, "config field track_iou: must be a finite number in [0, 1] (got 1.5)"),
        ({"overwrite": "yes"}, "config field overwrite: must be true or false (got 'yes')"),
        ({"backend": None}, "config field backend: must be a string (got null)"),
        ({"out": ""}, "config field out: must be a path (got '')"),
        ({"view_bins": {"frontal_max_deg": 70.0}}, "edges must increase: frontal_max_deg < profile_min_deg (got 70"),
        ({"view_bins": {"frontal_max_deg": 30.0, "profile_min_deg": 30.0}}, "edges must increase"),
        ({"view_bins": {"frontal_max_deg": math.inf}}, "config field view_bins.frontal_max_deg: must be"),
        ({"view_bins": {"yaw": 1}}, "config field view_bins: unknown keys ['yaw']"),
        ({"view_bins": [20, 60]}, "config field view_bins: must be a table of frontal_max_deg, profile_min_deg"),
    ],
)
def test_bad_values_are_one_error_naming_the_field_and_value(values, says):
    with pytest.raises(ConfigError) as caught:
        BuildConfig(**{**BASE, **values})
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.field == next(iter(values))


def test_replace_is_checked_too():
    with pytest.raises(ConfigError, match="filter_min_brightness"):
        dataclasses.replace(BuildConfig(**BASE), filter_min_brightness=math.nan)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("c.json", '{"sample_fps": NaN}', "config field sample_fps: must be a finite number > 0 (got nan)"),
        ("c.json", '{"max_clip_s": "ten"}', "max_clip_s: must be a finite number > 0 (got 'ten')"),
        ("c.json", '{"sample_fps": null}', "sample_fps: must be a finite number > 0 (got null)"),
        ("c.toml", "sample_fps = inf\n", "sample_fps: must be a finite number > 0 (got inf)"),
        ("c.json", "[" * 100_000 + "]" * 100_000, "not a valid JSON file: nested too deeply"),
        ("c.json", '{"sample_fps": 2', "not a valid JSON file"),
        ("c.json", "[1, 2]", "must hold a table of config fields (got a list)"),
        ("c.json", '{"nope": 1}', "unknown config keys ['nope']"),
    ],
)
def test_a_bad_config_file_is_one_error_naming_the_file(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        BuildConfig.from_file(path, src=".", out=".")
    assert str(caught.value).startswith(f"{path}: ") and says in str(caught.value)


def test_a_bad_flag_over_a_file_is_named_without_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"sample_fps": 2.0}')
    with pytest.raises(ConfigError) as caught:
        BuildConfig.from_file(path, src=".", out=".", sample_fps=math.nan)
    assert str(caught.value) == "config field sample_fps: must be a finite number > 0 (got nan)"


def test_a_tampered_run_json_names_the_file_and_is_not_a_usage_error(tmp_path):
    cfg = BuildConfig(src=".", out=tmp_path).to_dict()
    RunDir(tmp_path).write_record({"config": {**cfg, "max_clip_s": "ten"}})
    with pytest.raises(ValueError) as caught:
        BuildConfig.from_run(tmp_path)
    assert not isinstance(caught.value, ConfigError)  # the run's record is garbage: exit 1, not a usage error
    assert str(tmp_path / "run.json") in str(caught.value) and "max_clip_s" in str(caught.value)
    (tmp_path / "run.json").write_text(json.dumps({"config": [1]}))
    with pytest.raises(ValueError, match=r"run\.json: its config is not a table"):
        BuildConfig.from_run(tmp_path)
    RunDir(tmp_path).write_record({"config": {"sample_fps": 2.0}})  # no src: named, not a TypeError
    with pytest.raises(ValueError, match=r"run\.json: recorded config field src: missing"):
        BuildConfig.from_run(tmp_path)
    RunDir(tmp_path).write_record({"config": cfg})
    with pytest.raises(ConfigError, match="sample_fps"):  # a bad override is the caller's usage error
        BuildConfig.from_run(tmp_path, sample_fps=math.inf)
