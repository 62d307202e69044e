"""Scale path: process groups, FSDP2 and activation checkpointing, applied to an unchanged model.

Launch with torchrun (`torchrun --nproc_per_node N -m harmoview.cli train ...`); a single process needs
nothing. Parallelism is a function applied to the built model (torchtitan's way), never a patched forward:

- `apply_activation_checkpointing` wraps each DiT block so that its activations are recomputed in
  backward (non-reentrant torch.utils.checkpoint);
- `apply_fsdp` shards each block and then the root with FSDP2 (`fully_shard`), with a bf16 parameter /
  fp32 reduction policy when asked. Per-block sharding lets FSDP gather one block's weights at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    """Where this process sits: rank, world size and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reads checkpoints, writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process (FSDP and collectives on)."""
        return self.world_size > 1


def init_distributed() -> Distributed:
    """Join the torchrun process group when launched by torchrun (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def resolve_bf16(mixed_precision: str, device: torch.device) -> bool:
    """Whether training computes in bf16: 'bf16', 'fp32', or 'auto' = bf16 on GPUs, fp32 on CPUs."""
    return mixed_precision == "bf16" or (mixed_precision == "auto" and device.type == "cuda")


def shutdown_distributed() -> None:
    """Leave the process group, when one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a scalar over all ranks (the value itself in a single process)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def all_reduce_any(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any rank (e.g. a non-finite loss somewhere)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# Module names that wrappers insert into parameter names: activation checkpointing, torch.compile, FSDP1.
_WRAPPER_PARTS = ("_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module")


def canonical_name(name: str) -> str:
    """A parameter name without wrapper parts (`blocks.0._checkpoint_wrapped_module.ffn.0.weight` ->
    `blocks.0.ffn.0.weight`): what checkpoints store, so that wrapping a model differently between runs
    (e.g. `--activation-checkpointing` switched on after an out-of-memory) still resumes."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Wrap every DiT block with non-reentrant activation checkpointing (in place)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_fsdp(model: nn.Module, *, bf16: bool, device: torch.device) -> None:
    """Shard each block, then the root, over all ranks with FSDP2 (in place).

    Parameters, gradients and optimiser state are split across ranks; a block's full weights exist
    only while it runs. With `bf16`, compute runs in bf16 and gradients are reduced in fp32. FSDP2 would also
    cast every module's floating-point inputs to bf16; it is told not to: the trainer runs the model under bf16
    autocast, which lowers each matmul itself, while a cast would round the timesteps at the root (999 -> 1000:
    bf16 steps by 4 above 512) and, with `DiTConfig.fp32_residual`, turn the float32 stream into bf16 at every
    block's entry.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kwargs = {"mesh": mesh}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False
        )
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
