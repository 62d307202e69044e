"""Curriculum honesty: EMA warm-up, the unconditional branch, per-stage random streams, counts over ranks."""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from harmoview import read_state_dict
from harmoview.model.weights import native_to_diffusers_key
from harmoview.train.dropout import ViewDropout
from harmoview.train.inputs import EncodedBatch, generator, make_inputs
from harmoview.train.log import MetricsLog, sum_counters_over_ranks, sum_over_ranks
from harmoview.train.optim import EMA, ema_decay_at
from harmoview.train.recipes import RECIPES, apply_overrides, get_recipe
from harmoview.train.trainer import Trainer, train
from tests.harmoview.train.helpers import losses, tiny_config, tiny_run

# --- EMA warm-up ----------------------------------------------------------------------------------------


def test_ema_decay_follows_the_warm_up_formula():
    for n in (1, 2, 8, 80, 1000, 8990, 8991, 10**6):
        assert ema_decay_at(n, 0.999) == min(0.999, (1 + n) / (10 + n))
    assert ema_decay_at(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay_at(8, 0.999) == pytest.approx(0.5)
    assert ema_decay_at(8989, 0.999) < 0.999 and ema_decay_at(8991, 0.999) == 0.999  # 0.999 from n = 8990 on
    assert ema_decay_at(5, 0.3) == 0.3  # a low configured decay is never raised
    decays = [ema_decay_at(n, 0.999) for n in range(1, 20000)]
    assert decays == sorted(decays)


def test_ema_update_uses_the_warmed_up_decay():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.999)
    start = ema.state_dict()["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, num_steps=1)
    expected = start + (1 - 2 / 11) * 1.0  # decay 2/11 at the first step, not 0.999
    torch.testing.assert_close(ema.state_dict()["weight"], expected)


def test_ema_after_a_short_stage_is_close_to_the_trained_weights(shipped_run, tiny_encoders, tiny_init, tmp_path):
    config = tiny_config("pvc-stage2", steps=8, ema_decay=0.999, lr=3e-3)
    trainer = Trainer(config, tiny_run(shipped_run, tiny_encoders, tmp_path, tiny_init))
    summary = trainer.run()
    before, exported = read_state_dict(tiny_init), read_state_dict(summary.export)  # diffusers layout
    moved = lag = 0.0
    for name, p in trainer.model.named_parameters():
        key = native_to_diffusers_key(name)
        moved += float((p.detach() - before[key]).square().sum())
        lag += float((p.detach() - exported[key]).square().sum())
    assert moved > 0
    # With a constant 0.999 the export would be ~99% the initial weights (lag ~ moved); warmed up, the
    # average follows the last few steps.
    assert math.sqrt(lag) < 0.5 * math.sqrt(moved), f"EMA lags {lag:.4g} behind weights that moved {moved:.4g}"


# --- the unconditional branch ---------------------------------------------------------------------------


def _batch(num_samples: int = 2) -> EncodedBatch:
    present = torch.zeros(num_samples, 1, 5, dtype=torch.bool)
    present[:, 0, :3] = True
    return EncodedBatch(
        sample_ids=[f"smp_{i}" for i in range(num_samples)], latents=torch.randn(num_samples, 4, 2, 4, 4),
        text=torch.ones(num_samples, 3, 6), ref_present=present,
        ref_latents=torch.randn(num_samples, 1, 5, 4, 4, 4), vit=torch.randn(num_samples, 1, 2, 8),
    )  # fmt: skip


def _inputs(dropout: ViewDropout, recipe: str, step: int, micro: int = 0, enc: EncodedBatch | None = None):
    """What the trainer feeds the model for one micro-batch: the shared draw, then per-sample dropout."""
    conditions = dropout.draw_step(generator(0, recipe, step, micro, "refs"))
    inputs = make_inputs(
        enc or _batch(), empty_text=torch.zeros(3, 6), dropout=dropout, refs_on=conditions.refs_on,
        mfi_on=conditions.refs_on, shift=5.0, sigma_range=(0.0, 1.0), seed=0, step=step, micro=micro,
        stream=recipe, uncond=conditions.uncond,
    )  # fmt: skip
    return conditions, inputs


@pytest.mark.parametrize("recipe", ["pvc-stage1", "pvc-stage2", "pvc-stage3", "pvc-stage4"])
def test_unconditional_rate_over_many_draws_matches_the_recipe(recipe):
    dropout = get_recipe(recipe).dropout
    enc, num_steps, uncond, total = _batch(), 3000, 0, 0
    for step in range(num_steps):
        _, inputs = _inputs(dropout, recipe, step, enc=enc)
        empty = (inputs.text == 0).flatten(1).all(1)  # (B,) captions replaced by the empty prompt
        no_refs = inputs.references is None and inputs.vit_features is None
        uncond += int(empty.sum()) if no_refs else 0
        total += len(enc.sample_ids)
    rate = uncond / total
    expected = dropout.p_uncond + dropout.p_all_refs * dropout.p_text
    assert dropout.uncond_rate == pytest.approx(expected)
    # micro-batch draws are shared by its samples: the spread is that of num_steps draws
    tolerance = 4 * math.sqrt(max(expected * (1 - expected), 1e-4) / num_steps)
    assert abs(rate - expected) < tolerance, (recipe, rate, expected)


def test_curriculum_trains_the_unconditional_branch_from_stage_2_on():
    rates = {name: get_recipe(name).dropout.uncond_rate for name in RECIPES}
    assert rates["pvc-stage1"] == 0  # frozen backbone: nothing trainable would be used
    for name in ("pvc-stage2", "pvc-stage2-lora", "pvc-stage3", "pvc-stage4"):
        assert 0.05 <= rates[name] <= 0.15, (name, rates[name])


def test_unconditional_micro_batch_has_no_references_and_empty_captions():
    dropout = ViewDropout(p_uncond=1.0)
    conditions, inputs = _inputs(dropout, "custom", step=0)
    assert conditions.uncond and not conditions.refs_on
    assert inputs.references is None and inputs.vit_features is None
    assert bool((inputs.text == 0).all()) and inputs.num_text_dropped == 2
    with pytest.raises(ValueError, match="unconditional"):
        make_inputs(
            _batch(), empty_text=torch.zeros(3, 6), dropout=dropout, refs_on=True, mfi_on=False, shift=5.0,
            sigma_range=(0.0, 1.0), seed=0, step=0, micro=0, uncond=True,
        )  # fmt: skip
    with pytest.raises(ValueError, match="exceeds 1"):
        ViewDropout(p_all_refs=0.6, p_uncond=0.6)


# --- random streams keyed by stage ----------------------------------------------------------------------


def test_two_stages_draw_different_noise_and_dropout_for_the_same_sample_and_step():
    dropout = ViewDropout(p_view=0.5, p_all_refs=0.3, p_uncond=0.2, p_text=0.5)
    enc = _batch()
    _, a = _inputs(dropout, "pvc-stage3", step=6, enc=enc)
    _, b = _inputs(dropout, "pvc-stage4", step=6, enc=enc)
    _, again = _inputs(dropout, "pvc-stage3", step=6, enc=enc)
    assert not torch.equal(a.noisy, b.noisy) and a.timestep_values != b.timestep_values
    assert torch.equal(a.noisy, again.noisy) and a.timestep_values == again.timestep_values  # one stage: reproducible
    # the shared per-micro-batch draw and the per-sample dropout differ between stages over a few steps
    decisions = {
        stage: [dropout.draw_step(generator(0, stage, step, 0, "refs")) for step in range(64)]
        for stage in ("pvc-stage3", "pvc-stage4")
    }
    assert decisions["pvc-stage3"] != decisions["pvc-stage4"]
    kept = {
        stage: [dropout.drop_views(enc.ref_present[0], generator(0, stage, step, 0, "smp_0")) for step in range(16)]
        for stage in ("pvc-stage3", "pvc-stage4")
    }
    assert any(not torch.equal(x, y) for x, y in zip(kept["pvc-stage3"], kept["pvc-stage4"], strict=True))


def test_trainer_streams_differ_by_stage_and_repeat_within_one(shipped_run, tiny_encoders, tiny_init, tmp_path):
    """Two runs that differ only in the stage's name draw other sigmas; the same stage twice draws the same."""
    settings = {"steps": 3, "dropout": {"p_view": 0.5, "p_all_refs": 0.2, "p_uncond": 0.2, "p_text": 0.3}}
    runs = {}
    for name, recipe in (("a", "pvc-stage3"), ("b", "pvc-stage3"), ("c", "pvc-stage4")):
        config = apply_overrides(tiny_config("pvc-stage3", ema_decay=0.0, **settings), {"recipe": recipe})
        summary = train(config, tiny_run(shipped_run, tiny_encoders, tmp_path / name, tiny_init))
        runs[name] = (MetricsLog(tmp_path / name, enabled=True).read(), summary)
    (a, sa), (b, _), (c, _) = runs["a"], runs["b"], runs["c"]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert [r["t_min"] for r in a] == [r["t_min"] for r in b]
    assert [r["t_min"] for r in a] != [r["t_min"] for r in c]
    # the metrics count what the step saw: views kept after dropout, captions dropped, unconditional share
    for r in a:
        assert 0 <= r["views_kept"] <= r["views_present"]
        assert (r["views_kept"] > 0) == (r["refs_on"] > 0)
        assert r["uncond"] in (0.0, 1.0) and not (r["uncond"] and r["refs_on"])
    assert sa.text_dropped == sum(r["text_dropped"] for r in a)


# --- counts summed over ranks ---------------------------------------------------------------------------


def _count_on_rank(rank: int, world: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        device = torch.device("cpu")
        counts = sum_over_ranks({"text_dropped": rank + 1, "views_kept": 10 * rank}, device)
        skipped = sum_counters_over_ranks(Counter({"missing_video": 1} if rank == 0 else {"bad_crop": 2}), device)
        nothing = sum_counters_over_ranks(Counter(), device)
        results[rank] = (counts, dict(skipped), dict(nothing))
    finally:
        dist.destroy_process_group()


def test_counts_are_summed_over_ranks(tmp_path):
    os.environ.pop("WORLD_SIZE", None)
    results = mp.Manager().dict()
    mp.spawn(_count_on_rank, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    for rank in (0, 1):
        counts, skipped, nothing = results[rank]
        assert counts == {"text_dropped": 3, "views_kept": 10}
        assert skipped == {"missing_video": 1, "bad_crop": 2} and nothing == {}
    # one process: the counts themselves
    assert sum_over_ranks({"x": 2}, torch.device("cpu")) == {"x": 2}
    assert sum_counters_over_ranks(Counter(a=1), torch.device("cpu")) == Counter(a=1)


def test_recipe_probabilities_are_documented_in_the_recipe_table():
    import harmoview.train.recipes as recipes

    doc = recipes.__doc__
    for name in ("pvc-stage1", "pvc-stage2", "pvc-stage3", "pvc-stage4"):
        d = get_recipe(name).dropout
        row = next(line for line in doc.splitlines() if line.strip().startswith(name + " "))
        numbers = [float(x) for x in row.replace("|", " ").split()[1:]]
        unconditional = d.uncond_rate
        refs_no_text = (1 - d.p_uncond - d.p_all_refs) * d.p_text
        text_no_refs = d.p_all_refs * (1 - d.p_text)
        expected = [d.p_view, d.p_all_refs, d.p_uncond, d.p_text, unconditional, refs_no_text, text_no_refs]
        assert numbers == pytest.approx(expected), (name, numbers, expected)
