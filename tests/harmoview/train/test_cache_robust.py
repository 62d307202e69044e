"""`--cache` as users run it: samples missing from the cache are skipped and counted (never a switch to
encoding), a missing folder or a cache of other settings is a one-line error naming the setting, and one
`harmoview cache` command fills the buckets of every stage asked for."""

from __future__ import annotations

import json

from harmoview.cli import main
from harmoview.cli.train import cache_presets
from harmoview.model.encoders import Encoders
from harmoview.testing import tiny_vit_layers
from harmoview.train.cache import build_cache
from harmoview.train.trainer import Trainer
from tests.conftest import VIDEOS
from tests.harmoview.train.helpers import TEXT_LEN, cli_args, encoder_args, tiny_config, tiny_run, write_overrides


def _unreadable_videos(folder):
    """A video root whose files all fail to decode: `harmoview cache` then writes its folders in seconds."""
    folder.mkdir()
    for video in VIDEOS.iterdir():
        (folder / video.name).write_bytes(b"not a video")
    return folder


def test_samples_missing_from_the_cache_are_skipped_and_counted(shipped_run, tiny_encoders, tiny_init, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    for video in VIDEOS.iterdir():
        (src / video.name).symlink_to(video)
    (src / "carphone_qcif.mp4").unlink()  # gone before `harmoview cache` ran: its sample is not cached
    encoders = Encoders.load(tiny_encoders, text_len=TEXT_LEN, vit_layers=tiny_vit_layers)
    data = tiny_config("pvc-stage3").data
    data.ref_size = (32, 32)  # the tiny DiT's 4x4 reference latents at VAE stride 8
    built = build_cache([shipped_run], tmp_path / "cache", encoders, data, video_roots=[src], progress=False)
    assert built.skipped["missing_video"] >= 1

    config = tiny_config("pvc-stage3", steps=16)  # more than one epoch of the 14 usable samples
    run = tiny_run(shipped_run, tiny_encoders, tmp_path / "out", tiny_init, cache=tmp_path / "cache", video_roots=[src])
    trainer = Trainer(config, run)
    assert trainer.encoders.text_encoder is None  # nothing is encoded on the fly: the encoders are gone
    summary = trainer.run()
    assert summary.steps == 16 and summary.cache is not None
    assert summary.skipped["uncached"] >= 1 and "missing_video" not in summary.skipped, summary.skipped
    assert "uncached" in summary.format()


def test_a_cache_folder_that_does_not_exist_is_an_error(shipped_run, tiny_encoders, tiny_init, tmp_path, capsys):
    overrides = write_overrides(tmp_path / "o.json", steps=1)
    args = cli_args("pvc-stage1", shipped_run, tiny_encoders, tmp_path / "out", tiny_init, overrides)
    assert main([*args, "--cache", str(tmp_path / "no-such-cache")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no-such-cache does not exist" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_cache_of_other_settings_names_the_setting(shipped_run, tiny_encoders, tiny_init, tmp_path, capsys):
    videos = _unreadable_videos(tmp_path / "videos")
    cache = ["cache", "--manifests", str(shipped_run), "--out", str(tmp_path / "cache"), "--buckets", "tiny",
             "--video-root", str(videos), *encoder_args(tiny_encoders), "--quiet"]  # fmt: skip
    assert main([*cache, "--ref-latent-size", "32"]) == 0  # the default; the tiny preset uses 4
    overrides = write_overrides(tmp_path / "o.json", steps=1)
    args = cli_args("pvc-stage1", shipped_run, tiny_encoders, tmp_path / "out", tiny_init, overrides)
    capsys.readouterr()
    assert main([*args, "--cache", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ref_latent_size=[32, 32], this run uses [4, 4]" in err, err
    assert "buckets" not in err.split("built with")[1]  # only what differs is named


def test_one_cache_command_fills_the_buckets_of_every_stage_asked_for(shipped_run, tiny_encoders, tmp_path, capsys):
    assert cache_presets(None, None) == {"480p": "pvc-stage1", "480p+720p": "pvc-stage4"}
    assert cache_presets(["pvc-stage4"], None) == {"480p+720p": "pvc-stage4"}
    assert cache_presets(["pvc-stage4"], "tiny") == {"tiny": "pvc-stage4"}
    videos = _unreadable_videos(tmp_path / "videos")
    cache = ["cache", "--manifests", str(shipped_run), "--out", str(tmp_path / "cache"), "--recipe", "pvc-stage3",
             "--recipe", "pvc-stage4", "--video-root", str(videos), *encoder_args(tiny_encoders),
             "--quiet"]  # fmt: skip
    assert main(cache) == 0
    said = capsys.readouterr().out
    assert "buckets 480p:" in said and "buckets 480p+720p:" in said
    records = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/cache.json")]
    assert sorted(r["buckets"] for r in records) == ["480p", "480p+720p"]
