"""The model a training stage starts from, and which of it trains.

`prepare_model` builds the initial weights (a Wan checkpoint, a previous stage's export, or a preset's
random weights with a random, not zero, head: see `load_initial_model`), adds LoRA adapters when asked,
freezes what the stage does not train, and applies activation checkpointing and FSDP2 - functions applied
to the unchanged model, never a patched forward.

Under torchrun every rank builds the model on the meta device and shards it, then streams the checkpoint
into its own shards (`load_sharded`: one tensor at a time, only its rows, in the stored dtype until copied).
No process holds the full state dict: a 14B model never exists whole in host memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from harmoview.model.dit import HarmoViewDiT, is_harmoview_param
from harmoview.model.encoders import Encoders
from harmoview.model.weights import build_model, initial_config, load_sharded
from harmoview.train.parallel import Distributed, apply_activation_checkpointing, apply_fsdp

# Backbone linears that LoRA adapts (Wan's attention projections and FFN); the HarmoView modules
# train fully instead, they start from scratch.
LORA_TARGETS = r".*blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)|.*blocks\.\d+\.ffn\.(0|2)"


def add_lora(model: nn.Module, rank: int, alpha: float) -> None:
    """Inject peft LoRA adapters into the backbone linears (in place, the model keeps its class)."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS), model)


def merge_lora(state: dict[str, torch.Tensor], rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """A full state dict with LoRA folded in: W = W0 + (alpha / rank) * B @ A, under the plain names.

    Works on a gathered (unsharded) state dict, so it serves FSDP runs as well as single processes.
    """
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if ".base_layer." in key:
            prefix, param = key.split(".base_layer.")
            if param == "weight" and f"{prefix}.lora_A.default.weight" in state:
                a = state[f"{prefix}.lora_A.default.weight"].float()  # (r, in)
                b = state[f"{prefix}.lora_B.default.weight"].float()  # (out, r)
                value = (value.float() + (alpha / rank) * (b @ a)).to(value.dtype)
            key = f"{prefix}.{param}"
        merged[key] = value
    return merged


def set_trainable(model: nn.Module, trainable: str) -> list[str]:
    """Freeze or unfreeze parameters for 'harmoview', 'all' or 'lora'; returns the trainable names."""
    names = []
    for name, p in model.named_parameters():
        if trainable == "all":
            train = True
        elif trainable == "lora":
            train = "lora_" in name or is_harmoview_param(name)
        else:
            train = is_harmoview_param(name)
        p.requires_grad_(train)
        if train:
            names.append(name)
    if not names:
        raise ValueError(f"trainable={trainable!r} leaves nothing to train (does the model have HarmoView modules?)")
    return names


def load_initial_model(init: Path | None, preset: str | None, encoders: Encoders) -> HarmoViewDiT:
    """The full initial model on the CPU: loaded weights, new HarmoView modules initialised.

    Without weights (`preset`), the random backbone stands in for a pretrained one: its head gets random
    (Xavier) weights instead of Wan's zero init. With a zero head, stage 1 (head and backbone frozen) would
    pass no gradient to any module and train nothing. Loaded weights keep their own head.
    """
    config, directory = initial_config(init, preset, encoders)
    model, report = build_model(config, directory)
    if directory is None:
        model.initialize_weights(["head.head.weight"], zero_head=False)
    if report is not None and report.new:
        tqdm.write(f"initialised {len(report.new)} new HarmoView tensors (not in {directory})")
    return model


def prepare_model(
    init: Path | None, preset: str | None, encoders: Encoders, dist: Distributed, *, trainable: str,
    lora_rank: int, lora_alpha: float, activation_checkpointing: bool, bf16: bool,
) -> HarmoViewDiT:  # fmt: skip
    """The stage's model on `dist.device`: initial weights, LoRA, frozen parts, checkpointing, FSDP2."""
    if not dist.enabled:
        model = load_initial_model(init, preset, encoders)
        _adapt(model, trainable, lora_rank, lora_alpha, activation_checkpointing)
        return model.to(dist.device)
    config, directory = initial_config(init, preset, encoders)
    with torch.device("meta"):
        model = HarmoViewDiT(config)
        _adapt(model, trainable, lora_rank, lora_alpha, activation_checkpointing)
    apply_fsdp(model, bf16=bf16, device=dist.device)
    model.to_empty(device=dist.device)
    report = load_sharded(model, directory, zero_head=directory is not None)  # a random preset: random head
    if dist.is_main and report is not None and report.new:
        tqdm.write(f"initialised {len(report.new)} new HarmoView tensors (not in {directory})")
    return model


def _adapt(model: nn.Module, trainable: str, lora_rank: int, lora_alpha: float, checkpointing: bool) -> None:
    if trainable == "lora":
        add_lora(model, lora_rank, lora_alpha)
    set_trainable(model, trainable)
    if checkpointing:
        apply_activation_checkpointing(model)
