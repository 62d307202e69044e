"""Resume as users run it: another wrapper (activation checkpointing) resumes exactly, an unreadable newest
checkpoint falls back to the previous kept one, and another config is refused unless allowed."""

from __future__ import annotations

import pytest
import torch

from harmoview import read_state_dict
from harmoview.cli import main
from harmoview.train.checkpoint import (
    CheckpointError,
    config_changes,
    kept_checkpoints,
    resume_latest,
    save_checkpoint,
)
from harmoview.train.optim import EMA
from harmoview.train.parallel import Distributed, apply_activation_checkpointing
from harmoview.train.trainer import train
from tests.harmoview.train.helpers import cli_args, losses, tiny_config, tiny_run, write_overrides

ONE_PROCESS = Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _truncate(file) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _shard(checkpoint):
    return next(checkpoint.glob("*.distcp"))


def test_switching_activation_checkpointing_on_resumes_exactly(shipped_run, tiny_encoders, tiny_init, tmp_path):
    reference = train(
        tiny_config("pvc-stage3", steps=4, ema_decay=0.9),
        tiny_run(shipped_run, tiny_encoders, tmp_path / "reference", tiny_init),
    )
    out = tmp_path / "switched"
    train(tiny_config("pvc-stage3", steps=2, ema_decay=0.9), tiny_run(shipped_run, tiny_encoders, out, tiny_init))
    # after an out-of-memory a user switches checkpointing on and resumes: the EMA names must still match
    resumed = train(
        tiny_config("pvc-stage3", steps=4, ema_decay=0.9, activation_checkpointing=True),
        tiny_run(shipped_run, tiny_encoders, out, tiny_init),
    )
    assert resumed.resumed_from == 2
    assert losses(out) == losses(tmp_path / "reference")
    a, b = read_state_dict(reference.export), read_state_dict(resumed.export)  # the EMA weights
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_checkpoint_names_are_free_of_wrappers(tmp_path):
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.Linear(3, 3) for _ in range(2)])
    optimiser = torch.optim.AdamW(model.parameters())
    apply_activation_checkpointing(model)
    wrapped = EMA(model, 0.9)
    assert any("_checkpoint_wrapped_module" in name for name in wrapped.state_dict())
    path = save_checkpoint(tmp_path, 1, model, optimiser, wrapped, {"step": 1, "world_size": 1}, ONE_PROCESS, keep=2)
    plain = torch.nn.Module()
    plain.blocks = torch.nn.ModuleList([torch.nn.Linear(3, 3) for _ in range(2)])
    ema = EMA(plain, 0.9)
    found, state = resume_latest(tmp_path, plain, torch.optim.AdamW(plain.parameters()), ema, ONE_PROCESS)
    assert found == path and state["step"] == 1
    for name, value in wrapped.state_dict().items():
        torch.testing.assert_close(ema.state_dict()[name.replace("_checkpoint_wrapped_module.", "")], value)


def test_truncated_newest_checkpoint_resumes_from_the_previous(shipped_run, tiny_encoders, tiny_init, tmp_path, capsys):
    train(tiny_config("pvc-stage3", steps=6), tiny_run(shipped_run, tiny_encoders, tmp_path / "reference", tiny_init))
    out = tmp_path / "run"
    train(tiny_config("pvc-stage3", steps=4, checkpoint_every=2), tiny_run(shipped_run, tiny_encoders, out, tiny_init))
    newest = kept_checkpoints(out)[0]
    _truncate(_shard(newest))  # e.g. a disk that filled up while a copy of the run was made
    capsys.readouterr()
    summary = train(
        tiny_config("pvc-stage3", steps=6, checkpoint_every=2), tiny_run(shipped_run, tiny_encoders, out, tiny_init)
    )
    said = capsys.readouterr().out
    assert f"checkpoint {newest.name} is unreadable" in said and "truncated" in said and "previous kept" in said
    assert summary.resumed_from == 2 and summary.steps == 6
    assert losses(out) == losses(tmp_path / "reference")


@pytest.mark.parametrize("damage", ["metadata", "trainer.json", "all"])
def test_unreadable_checkpoints_are_named_in_one_line(tmp_path, damage, capsys):
    model = torch.nn.Linear(3, 3)
    optimiser = torch.optim.AdamW(model.parameters())
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model, optimiser, None, {"step": step, "world_size": 1}, ONE_PROCESS, keep=2)
    newest, previous = kept_checkpoints(tmp_path)
    if damage == "metadata":
        (newest / ".metadata").write_bytes(b"garbage, not a pickle")
    elif damage == "trainer.json":
        (newest / "trainer.json").write_text('{"step": 2, "wor')
    else:
        for checkpoint in (newest, previous):
            _truncate(_shard(checkpoint))
        with pytest.raises(CheckpointError) as caught:
            resume_latest(tmp_path, model, optimiser, None, ONE_PROCESS)
        message = str(caught.value)
        assert "\n" not in message and newest.name in message and previous.name in message
        return
    path, state = resume_latest(tmp_path, model, optimiser, None, ONE_PROCESS)
    assert path == previous and state["step"] == 1
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and str(newest / damage.replace("metadata", ".metadata")) in line


def test_truncated_init_is_one_line_naming_the_file(shipped_run, tiny_encoders, tiny_init, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in tiny_init.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    _truncate(broken / "diffusion_pytorch_model.safetensors")
    overrides = write_overrides(tmp_path / "o.json", steps=1)
    assert main(cli_args("pvc-stage1", shipped_run, tiny_encoders, tmp_path / "out", broken, overrides)) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(broken / "diffusion_pytorch_model.safetensors") in err


def test_resume_with_another_config_is_refused_unless_allowed(shipped_run, tiny_encoders, tiny_init, tmp_path, capsys):
    out = tmp_path / "out"
    overrides = write_overrides(tmp_path / "o.json", steps=2)
    args = cli_args("pvc-stage3", shipped_run, tiny_encoders, out, tiny_init, overrides)
    assert main(args) == 0
    written = (out / "config.json").read_bytes()
    capsys.readouterr()

    assert main([*args, "--lr", "0.002"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lr 0.001 -> 0.002" in err and "--allow-config-change" in err
    assert (out / "config.json").read_bytes() == written, "a refused resume rewrote config.json"
    other_recipe = cli_args("pvc-stage4", shipped_run, tiny_encoders, out, tiny_init, overrides)
    assert main(other_recipe) == 1 and "recipe pvc-stage3 -> pvc-stage4" in capsys.readouterr().err

    assert main([*args, "--steps", "3", "--activation-checkpointing"]) == 0  # a larger budget needs no flag
    assert "trained steps 2..3" in capsys.readouterr().out
    assert main([*args, "--steps", "4", "--lr", "0.002", "--allow-config-change"]) == 0
    said = capsys.readouterr().out
    assert "with changed settings" in said and "lr 0.001 -> 0.002" in said and "trained steps 3..4" in said
    assert '"lr": 0.002' in (out / "config.json").read_text()


def test_config_changes_allow_a_larger_budget_and_the_same_global_batch():
    saved = tiny_config("pvc-stage3", steps=10).to_dict()
    assert config_changes(saved, tiny_config("pvc-stage3", steps=20, num_workers=3).to_dict()) == []
    assert config_changes(saved, tiny_config("pvc-stage3", steps=5).to_dict()) == ["steps 10 -> 5"]
    doubled = tiny_config("pvc-stage3", steps=10, data={"batch_size": 2}).to_dict()
    assert config_changes(saved, doubled, saved_world_size=2, world_size=1) == []  # 2 x 1 = 1 x 2 samples a step
    assert config_changes(saved, doubled) == ["data.batch_size 1 -> 2"]
    dropout = tiny_config("pvc-stage3", steps=10, dropout={"p_view": 0.5}).to_dict()
    assert config_changes(saved, dropout) == ["dropout.p_view 0.3 -> 0.5"]
