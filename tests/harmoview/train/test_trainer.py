"""The trainer end to end on real manifests built by datakit from the shipped footage (tiny models, CPU)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import torch

from datakit.store import RunDir
from harmoview import from_pretrained, is_harmoview_param, read_state_dict
from harmoview.cli import main
from harmoview.model.encoders import Encoders
from harmoview.testing import tiny_vit_layers
from harmoview.train.cache import build_cache
from harmoview.train.log import MetricsLog
from harmoview.train.trainer import Trainer, train
from tests.conftest import SHIPPED_SAMPLES, VIDEOS
from tests.harmoview.train.helpers import (
    ROOT,
    TEXT_LEN,
    cli_args,
    encoder_args,
    losses,
    run_cli,
    tiny_config,
    tiny_run,
    write_overrides,
)

STAGES = ("pvc-stage1", "pvc-stage2", "pvc-stage3", "pvc-stage4")


@pytest.fixture(scope="module")
def cache_dir(shipped_run, tiny_encoders, tmp_path_factory) -> Path:
    """Encodings of every shipped sample for the tiny buckets (what `harmoview cache` writes)."""
    encoders = Encoders.load(tiny_encoders, text_len=TEXT_LEN, vit_layers=tiny_vit_layers)
    data = tiny_config("pvc-stage4").data
    data.ref_size = (32, 32)  # the tiny DiT's 4x4 reference latents at VAE stride 8
    out = tmp_path_factory.mktemp("cache")
    summary = build_cache([shipped_run], out, encoders, data, progress=False)
    assert summary.written == SHIPPED_SAMPLES and not summary.skipped
    again = build_cache([shipped_run], out, encoders, data, progress=False)  # resumable: nothing redone
    assert again.written == 0 and again.present == SHIPPED_SAMPLES
    return out


def _rewrite_samples(run: Path, change) -> None:
    """Rewrite a run's samples table through `change(list of rows) -> rows`, through the store so that the run's
    records match it (readers verify them)."""
    table = ds.dataset(run / "samples", format="parquet").to_table()
    rows = change(table.to_pylist())
    RunDir.open(run).replace_table("samples", pa.Table.from_pylist(rows, schema=table.schema))


@pytest.mark.parametrize("use_cache", [False, True], ids=["on-the-fly", "cache"])
def test_the_four_pvc_stages_chain_on_real_manifests(
    shipped_run, tiny_encoders, tiny_init, cache_dir, tmp_path, use_cache
):
    init = tiny_init
    for recipe in STAGES:
        out = tmp_path / recipe
        config = tiny_config(recipe, ema_decay=0.0, data={"batch_size": 2 if recipe == "pvc-stage4" else 1})
        summary = train(config, tiny_run(shipped_run, tiny_encoders, out, init, cache=cache_dir if use_cache else None))
        assert summary.steps == 3 and math.isfinite(summary.final_loss)
        assert (summary.cache is not None) is use_cache
        assert summary.null_captions == summary.usable_samples  # the shipped run has no captions
        assert len(losses(out)) == 3 and (out / "final" / "harmoview.json").exists()
        init = out  # the next stage starts from this stage's exported weights (out/final)

    before, after = read_state_dict(tiny_init), read_state_dict(tmp_path / "pvc-stage1" / "final")
    backbone = [k for k in before if not is_harmoview_param(k)]
    new = [k for k in before if is_harmoview_param(k)]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone), "stage 1 changed the backbone"
    assert any(not torch.equal(before[k], after[k]) for k in new), "stage 1 left the new modules untouched"
    stage2 = read_state_dict(tmp_path / "pvc-stage2" / "final")
    assert any(not torch.equal(after[k], stage2[k]) for k in backbone), "stage 2 must train the backbone"


def test_lora_stage_exports_merged_weights(shipped_run, tiny_encoders, tiny_init, tmp_path):
    summary = train(
        tiny_config("pvc-stage2-lora", ema_decay=0.0), tiny_run(shipped_run, tiny_encoders, tmp_path, tiny_init)
    )
    merged = read_state_dict(summary.export)
    before = read_state_dict(tiny_init)
    assert set(merged) == set(before), "the export must have the plain model's keys (LoRA folded in)"
    changed = [k for k in before if not torch.equal(before[k], merged[k])]
    # (exports use the diffusers layout: self_attn.q = attn1.to_q, the head = proj_out)
    assert any(".attn1.to_q.weight" in k for k in changed)  # a LoRA target moved
    frozen = [k for k in changed if not is_harmoview_param(k) and (k.startswith("proj_out.") or "norm" in k)]
    assert not frozen, f"backbone tensors outside LoRA's targets changed: {frozen}"


def test_overfitting_one_real_sample_cuts_the_loss_tenfold(shipped_run, tiny_encoders, tiny_init, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(shipped_run, run)
    _rewrite_samples(run, lambda rows: [r for r in rows if r["video_path"] == "obama_weekly_address_1.mp4"])
    config = tiny_config("pvc-stage2", steps=300, lr=3e-3, ema_decay=0.0, dropout={"p_text": 0.0, "p_uncond": 0.0})
    config.data.ref_size = (32, 32)
    encoders = Encoders.load(tiny_encoders, text_len=TEXT_LEN, vit_layers=tiny_vit_layers)
    build_cache([run], tmp_path / "cache", encoders, config.data, progress=False)
    summary = train(config, tiny_run(run, tiny_encoders, tmp_path / "out", tiny_init, cache=tmp_path / "cache"))
    assert summary.usable_samples == 1
    history = losses(tmp_path / "out")
    # median at the end: the per-step loss depends on the drawn sigma, and a few high-sigma draws dominate a mean
    first, last = statistics.mean(history[:10]), statistics.median(history[-30:])
    assert first / last >= 10, f"loss went from {first:.3f} to {last:.3f} only"


def test_cache_and_on_the_fly_give_the_same_losses(shipped_run, tiny_encoders, tiny_init, cache_dir, tmp_path):
    fresh = train(tiny_config("pvc-stage3", steps=4), tiny_run(shipped_run, tiny_encoders, tmp_path / "a", tiny_init))
    trainer = Trainer(
        tiny_config("pvc-stage3", steps=4),
        tiny_run(shipped_run, tiny_encoders, tmp_path / "b", tiny_init, cache=cache_dir),
    )
    # from the cache, the text encoder and the ViT are not needed any more: freed (umT5-XXL is ~11 GB)
    assert trainer.encoders.text_encoder is None and trainer.encoders.vit is None and trainer.encoders.has_vit
    cached = trainer.run()
    assert fresh.cache is None and cached.cache is not None
    torch.testing.assert_close(losses(tmp_path / "a"), losses(tmp_path / "b"), atol=1e-5, rtol=1e-5)


def test_cli_cache_then_train_from_it(shipped_run, tiny_encoders, tiny_init, tmp_path, capsys):
    encoder_flags = encoder_args(tiny_encoders)
    cache = ["cache", "--manifests", str(shipped_run), "--out", str(tmp_path / "cache"), "--buckets", "tiny"]
    assert main([*cache, "--ref-latent-size", "4", *encoder_flags, "--quiet"]) == 0
    assert f"{SHIPPED_SAMPLES} samples encoded" in capsys.readouterr().out
    overrides = write_overrides(tmp_path / "o.json", steps=2)
    args = cli_args("pvc-stage1", shipped_run, tiny_encoders, tmp_path / "out", tiny_init, overrides)
    assert main([*args, "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "encodings  : cache" in out and "trained steps 0..2" in out and "--init" in out


def test_deleted_video_and_corrupted_crop_are_skipped_and_counted(shipped_run, tiny_encoders, tiny_init, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    for video in VIDEOS.iterdir():
        (src / video.name).symlink_to(video)
    (src / "carphone_qcif.mp4").unlink()  # its sample's video is gone
    run = tmp_path / "run"
    shutil.copytree(shipped_run, run)

    corrupted = []

    def corrupt(rows):
        for row in rows:
            if row["video_path"] == "foreman_cif.mp4":
                row["identities"][0]["references"][0]["crop"] = b"not a jpeg"
                corrupted.append(row["sample_id"])
        return rows

    _rewrite_samples(run, corrupt)
    assert corrupted
    config = tiny_config("pvc-stage3", steps=16)  # one epoch of the usable samples and more
    summary = train(config, tiny_run(run, tiny_encoders, tmp_path / "out", tiny_init, video_roots=[src]))
    assert summary.steps == 16
    # every sample with a corrupted crop is met at least once in an epoch
    assert summary.skipped["missing_video"] >= 1 and summary.skipped["bad_crop"] >= len(corrupted), summary.skipped
    assert "skipped" in summary.format() and "missing_video" in summary.format()

    def all_bad(rows):
        for row in rows:
            for identity in row["identities"]:
                for ref in identity["references"]:
                    ref["crop"] = b"broken"
        return rows

    _rewrite_samples(run, all_bad)
    with pytest.raises(ValueError, match="no usable sample"):
        train(tiny_config("pvc-stage3", steps=2), tiny_run(run, tiny_encoders, tmp_path / "bad", tiny_init))


def test_ema_weights_are_exported_and_previews_written(shipped_run, tiny_encoders, tiny_init, tmp_path):
    config = tiny_config("pvc-stage3", steps=4, ema_decay=0.9, preview_every=2, preview_steps=3)
    trainer = Trainer(config, tiny_run(shipped_run, tiny_encoders, tmp_path, tiny_init))
    summary = trainer.run()
    exported, _ = from_pretrained(summary.export)
    ema = trainer.ema.state_dict()
    for name, p in exported.named_parameters():
        torch.testing.assert_close(p.detach(), ema[name], atol=0, rtol=0)
    assert any(not torch.equal(p, ema[n]) for n, p in trainer.model.named_parameters()), "EMA equals raw weights"
    for step in (2, 4):
        assert (tmp_path / "previews" / f"step_{step:08d}.mp4").stat().st_size > 0
        assert (tmp_path / "previews" / f"step_{step:08d}.png").exists()


def test_activation_checkpointing_and_expert_range(shipped_run, tiny_encoders, tiny_init, tmp_path):
    plain = train(tiny_config("pvc-stage3", steps=3), tiny_run(shipped_run, tiny_encoders, tmp_path / "a", tiny_init))
    checkpointed = train(
        tiny_config("pvc-stage3", steps=3, activation_checkpointing=True),
        tiny_run(shipped_run, tiny_encoders, tmp_path / "b", tiny_init),
    )
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # recomputation changes memory, not math
    assert plain.final_loss == checkpointed.final_loss
    for expert, inside in (("high", lambda t: t >= 875), ("low", lambda t: t < 875)):
        train(
            tiny_config("pvc-stage3", steps=4, expert=expert),
            tiny_run(shipped_run, tiny_encoders, tmp_path / expert, tiny_init),
        )
        records = MetricsLog(tmp_path / expert, enabled=True).read()
        assert all(inside(r["t_min"]) and inside(r["t_max"]) for r in records), (expert, records)


def test_bf16_autocast_path_runs(shipped_run, tiny_encoders, tiny_init, tmp_path):
    summary = train(
        tiny_config("pvc-stage2", steps=2, mixed_precision="bf16"),
        tiny_run(shipped_run, tiny_encoders, tmp_path, tiny_init),
    )
    assert summary.nonfinite_steps == 0 and math.isfinite(summary.final_loss)


def test_non_finite_steps_are_skipped_and_counted(shipped_run, tiny_encoders, tiny_init, tmp_path):
    trainer = Trainer(tiny_config("pvc-stage2", steps=2), tiny_run(shipped_run, tiny_encoders, tmp_path, tiny_init))
    with torch.no_grad():
        trainer.model.head.head.weight[0, 0] = float("nan")  # every prediction is NaN from now on
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    summary = trainer.run()
    assert summary.nonfinite_steps == 2
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, before[name]) or name == "head.head.weight", f"{name} changed on a skipped step"


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_loss_sequence(shipped_run, tiny_encoders, tiny_init, tmp_path):
    overrides = write_overrides(tmp_path / "o.json", steps=10, checkpoint_every=3, num_workers=2)
    reference = tmp_path / "reference"
    run_cli(cli_args("pvc-stage3", shipped_run, tiny_encoders, reference, tiny_init, overrides))
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "harmoview.cli",
        *cli_args("pvc-stage3", shipped_run, tiny_encoders, out, tiny_init, overrides),
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_00000006").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 6 in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data-loader workers
    proc.wait()
    assert not (out / "final").exists(), "the run finished before it was killed"
    run_cli(cli_args("pvc-stage3", shipped_run, tiny_encoders, out, tiny_init, overrides))
    assert losses(out) == losses(reference)  # exact: same steps, same data, same noise, no duplicate line
    assert len(losses(out)) == 10


@pytest.mark.slow
def test_torchrun_fsdp2_matches_one_process_and_resumes_in_one(shipped_run, tiny_encoders, tiny_init, tmp_path):
    two = write_overrides(tmp_path / "two.json", steps=3, data={"batch_size": 1})
    one = write_overrides(tmp_path / "one.json", steps=3, data={"batch_size": 2})
    fsdp = run_cli(cli_args("pvc-stage2", shipped_run, tiny_encoders, tmp_path / "fsdp", tiny_init, two), torchrun=2)
    assert "(6 samples seen" in fsdp.stdout  # 3 steps x 2 ranks x 1 sample, counted over ranks
    run_cli(cli_args("pvc-stage2", shipped_run, tiny_encoders, tmp_path / "single", tiny_init, one))
    # Same global batch (2 samples), same samples per step, same per-sample noise: equal up to float
    # reduction order (gloo averages gradients in another order than one process sums them).
    torch.testing.assert_close(losses(tmp_path / "fsdp"), losses(tmp_path / "single"), atol=1e-5, rtol=1e-4)
    a, b = read_state_dict(tmp_path / "fsdp" / "final"), read_state_dict(tmp_path / "single" / "final")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    # The 2-process sharded checkpoint resumes in one process and trains on.
    more = write_overrides(tmp_path / "more.json", steps=5, data={"batch_size": 2})
    result = run_cli(cli_args("pvc-stage2", shipped_run, tiny_encoders, tmp_path / "fsdp", tiny_init, more))
    assert "trained steps 3..5" in result.stdout
    assert len(losses(tmp_path / "fsdp")) == 5
