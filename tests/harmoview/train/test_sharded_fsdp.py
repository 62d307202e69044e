"""FSDP2 over two gloo processes on the CPU: a sharded checkpoint streamed into the shards, the fp32 stream."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers import WanTransformer3DModel

from harmoview import HarmoViewDiT, build_model, get_config, is_harmoview_param
from harmoview.model.shards import CheckpointSource
from harmoview.model.weights import diffusers_config, load_sharded
from harmoview.train.parallel import apply_activation_checkpointing, apply_fsdp
from harmoview.train.trainable import add_lora
from tests.harmoview.model.helpers import make_references, video_inputs

CPU = torch.device("cpu")


class ReadCounter:
    """Instrument around a real `CheckpointSource`: how many stored elements this rank read."""

    def __init__(self, source: CheckpointSource) -> None:
        self.source, self.elements = source, 0

    def shapes(self) -> dict:
        return self.source.shapes()

    def items(self):
        for ref in self.source.items():
            yield type(ref)(ref.key, ref.shape, lambda rows, read=ref.read_rows: self._count(read(rows)), ref.file)

    def _count(self, tensor: torch.Tensor) -> torch.Tensor:
        self.elements += tensor.numel()
        return tensor


def _sharded(config, checkpoint, *, bf16: bool, zero_head: bool = True, lora: bool = False) -> HarmoViewDiT:
    """What `prepare_model` does under torchrun: meta model (LoRA and activation checkpointing when asked), FSDP2,
    `to_empty`, then stream the weights in."""
    with torch.device("meta"):
        model = HarmoViewDiT(config)
        if lora:
            add_lora(model, rank=2, alpha=2.0)
            apply_activation_checkpointing(model)
    apply_fsdp(model, bf16=bf16, device=CPU)
    model.to_empty(device=CPU)
    load_sharded(model, checkpoint, zero_head=zero_head)
    return model


def _on_rank(rank: int, world: int, init_file: str, folder: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        config = get_config("tiny")
        # 1. the sharded load equals a one-process load of the same folder (new modules: same draws)
        torch.manual_seed(0)
        counter = ReadCounter(CheckpointSource.open(folder))
        model = _sharded(config, counter, bf16=False)
        torch.manual_seed(0)
        single, _ = build_model(config, folder)
        diffs = [
            (n, (p.full_tensor() - single.get_parameter(n)).abs().max().item()) for n, p in model.named_parameters()
        ]
        total = sum(math.prod(shape) for shape in counter.shapes().values())  # elements in the checkpoint
        # ... also through LoRA and activation-checkpoint wrappers (other parameter names); adapters get peft's
        # init, drawn between the new modules' draws, so only the loaded tensors compare
        torch.manual_seed(0)
        wrapped = _sharded(config, folder, bf16=False, lora=True)
        plain = {n.replace("_checkpoint_wrapped_module.", "").replace("base_layer.", ""): p.full_tensor()
                 for n, p in wrapped.named_parameters()}  # fmt: skip
        loaded = [n for n, _ in single.named_parameters() if not is_harmoview_param(n)]  # new ones: other draws
        diffs += [(n, (plain[n] - single.get_parameter(n)).abs().max().item()) for n in loaded]
        lora_a = plain["blocks.0.self_attn.q.lora_A.default.weight"]
        lora = (lora_a.abs().sum().item(), plain["blocks.0.self_attn.q.lora_B.default.weight"].abs().sum().item())
        # 2. the residual stream under a bf16 FSDP2 policy, as the trainer runs it (autocast on)
        dtypes = {}
        for fp32_residual in (True, False):
            torch.manual_seed(1)
            model = _sharded(config.replace(fp32_residual=fp32_residual), None, bf16=True, zero_head=False)
            seen, timesteps = set(), []
            for block in model.blocks:
                block.register_forward_pre_hook(lambda _m, args, seen=seen: seen.add(args[0].dtype))
            model.register_forward_pre_hook(lambda _m, args, ts=timesteps: ts.append(args[1].tolist()))
            video, t, text = video_inputs(config)
            refs = make_references(config, [[[True, False, True, False, False]]] * 2)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(video, t, text, refs)
            dtypes[fp32_residual] = (seen, bool(torch.isfinite(out).all()), timesteps == [t.tolist()])
        results[rank] = (diffs, counter.elements, total, dtypes, lora)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_stream_a_sharded_checkpoint_and_keep_the_fp32_stream(tiny, tmp_path):
    torch.manual_seed(3)
    theirs = WanTransformer3DModel(**{k: v for k, v in diffusers_config(tiny).items() if not k.startswith("_")})
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    theirs.to(torch.bfloat16).save_pretrained(tmp_path / "wan", max_shard_size="60KB")  # 2 files + index
    assert len(list((tmp_path / "wan").glob("*.safetensors"))) >= 2

    os.environ.pop("WORLD_SIZE", None)
    results = mp.Manager().dict()
    mp.spawn(_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "wan"), results), nprocs=2, join=True)
    for rank in (0, 1):
        diffs, read, total, dtypes, lora = results[rank]
        assert [n for n, d in diffs if d != 0] == [], f"rank {rank}: parameters differ from a one-process load"
        assert 0.4 * total < read < 0.6 * total, (read, total)  # about its half of the rows, not the checkpoint
        # FSDP casts no inputs: the stream stays fp32 through every block, the timesteps exact (bf16: 999 -> 1000)
        assert dtypes[True] == ({torch.float32}, True, True)
        assert dtypes[False] == ({torch.bfloat16}, True, True)
        assert lora[0] > 0 and lora[1] == 0 and lora == results[0][4]  # A random, B zero, the same on both ranks
