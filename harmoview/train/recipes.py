"""Training configs and the four recipes of HarmoView's Progressive View Curriculum (PVC).

A recipe is a Python function returning a fresh `TrainConfig` (torchtitan style): what trains, which
references the samples carry, the dropout probabilities, buckets, learning rate and steps. Each stage
starts from the previous stage's exported weights (`harmoview train --init PREVIOUS_OUT/final`).

    stage 1  new modules only (MFI, proxy/sink tokens), backbone frozen; one frontal reference.
    stage 2  the full model (or LoRA on the backbone + the new modules); one frontal reference.
    stage 3  multi-view references of the main subject with view dropout, sometimes none at all.
    stage 4  single/multi-view and up to 3 identities, larger buckets, text-only steps kept so that
             text-to-video ability survives.

The paper (arXiv 2606.10839) documents the four stages and view dropout; the probabilities, learning
rates and step counts below are our starting points, not the paper's (its values are unreleased).

Dropout probabilities per stage (`harmoview.train.dropout` defines the events; `harmoview train --help`
prints them from these functions):

    recipe       p_view  p_all_refs  p_uncond  p_text | unconditional samples  refs, no text  text, no refs
    pvc-stage1   0       0           0         0.1    | 0                      0.1            0
    pvc-stage2   0       0           0.05      0.1    | 0.05                   0.095          0
    pvc-stage3   0.3     0.05        0.05      0.1    | 0.055                  0.09           0.045
    pvc-stage4   0.4     0.1         0.1       0.1    | 0.11                   0.08           0.09

- p_view: each present view of an identity is dropped (one always kept) - multi-view stages only.
- p_all_refs: a micro-batch without references (text-to-video), keeps the backbone's text-to-video ability.
- p_uncond: a micro-batch without references and without text: the unconditional branch of three-way
  guidance (`generate --ref-scale / --text-scale`). Stage 1 has none: the backbone is frozen there and
  no trainable module would be used (and Wan's own unconditional branch is kept as it is).
- p_text: a sample's caption is replaced by the empty prompt (the references-only branch).
- unconditional samples = p_uncond + p_all_refs * p_text (`ViewDropout.uncond_rate`); refs without text =
  (1 - p_uncond - p_all_refs) * p_text; text without refs = p_all_refs * (1 - p_text).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harmoview.data.dataset import DataConfig
from harmoview.flow import DEFAULT_SHIFT
from harmoview.model.config import VIEW_SLOTS
from harmoview.train.dropout import ViewDropout

TRAINABLE = ("harmoview", "all", "lora")

# Bucket presets: (frame counts, (height, width) resolutions). Frame counts are 4k+1 (the Wan VAE's
# causal temporal stride 4); resolutions are Wan's 480p/720p areas in landscape, portrait and square.
BUCKETS: dict[str, tuple[tuple[int, ...], tuple[tuple[int, int], ...]]] = {
    "tiny": ((5,), ((32, 32),)),
    "480p": ((49, 17), ((480, 832), (832, 480), (624, 624))),
    "720p": ((81, 49, 17), ((720, 1280), (1280, 720), (960, 960))),
    "480p+720p": ((81, 49, 17), ((480, 832), (832, 480), (624, 624), (720, 1280), (1280, 720), (960, 960))),
}


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """Everything one training run needs besides its inputs (manifests, initial weights, output dir)."""

    recipe: str = "custom"
    """Name of the recipe this config came from (recorded in checkpoints and metrics)."""
    trainable: str = "harmoview"
    """'harmoview' = only the new modules, 'all' = the full model, 'lora' = LoRA on the backbone + new modules."""
    lora_rank: int = 64
    """Rank of the LoRA adapters (trainable='lora')."""
    lora_alpha: float = 64.0
    """LoRA scaling numerator: the update is (alpha / rank) * B @ A."""
    use_references: bool = True
    """Condition on reference views (False = plain text-to-video training)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Buckets, views, identities per sample, batch size, data seed."""
    buckets: str = "480p"
    """Name of the bucket preset (BUCKETS) that filled data.frame_counts / data.resolutions."""
    dropout: ViewDropout = field(default_factory=ViewDropout)
    """View, all-reference, unconditional and text dropout probabilities (table in the module docstring)."""
    steps: int = 1000
    """Optimiser steps of this stage."""
    lr: float = 1e-4
    """Peak learning rate (AdamW), reached after `warmup_steps` and then held."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up from 0."""
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    ema_decay: float = 0.999
    """Exponential moving average of the trainable weights (0 = no EMA); exported when on. The decay warms
    up as min(ema_decay, (1 + n) / (10 + n)) after n optimiser steps of the stage (`optim.ema_decay_at`)."""
    shift: float = DEFAULT_SHIFT
    """Sigma shift k of the rectified-flow schedule."""
    expert: str | None = None
    """Wan2.2 A14B: train one expert on its timestep range, 'high' (t >= 875) or 'low' (t < 875)."""
    seed: int = 0
    """Seed of noise, sigmas and dropout (drawn per stage, step and sample: resume is exact, stages differ)."""
    num_workers: int = 2
    """Data-loader processes per rank (0 = load in the training process)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (the last step always gets one)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept; older ones are deleted."""
    log_every: int = 1
    """Steps between metric lines."""
    preview_every: int = 0
    """Steps between preview videos (0 = none); needs the VAE."""
    preview_steps: int = 8
    """Euler steps of a preview."""
    sync_timing: bool = False
    """Synchronise the GPU after encoding on logged steps, so that `encode_s` is the encoders' own time
    (costs one device sync per micro-batch of a logged step); off, `encode_s` is the time to launch them."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward (less memory, about a third more compute)."""
    mixed_precision: str = "auto"
    """'bf16' (autocast, FSDP bf16 params with fp32 reduction), 'fp32', or 'auto' = bf16 on GPU, fp32 on CPU."""

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable={self.trainable!r}; use one of {TRAINABLE}")
        if self.mixed_precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r}; use auto, bf16 or fp32")
        if self.steps < 1 or self.grad_accum < 1:
            raise ValueError("steps and grad_accum must be >= 1")

    def use_buckets(self, name: str) -> TrainConfig:
        """Switch the data buckets to preset `name` (in place; returns self)."""
        if name not in BUCKETS:
            raise ValueError(f"unknown bucket preset {name!r}; known: {', '.join(BUCKETS)}")
        self.buckets = name
        self.data.frame_counts, self.data.resolutions = BUCKETS[name]
        return self

    def to_dict(self) -> dict:
        """Every setting as plain data (config.json, checkpoints)."""
        return dataclasses.asdict(self)


# --- the Progressive View Curriculum ------------------------------------------------------------------


def _frontal_only(batch_size: int = 1) -> DataConfig:
    return DataConfig(views=("frontal",), require_views=("frontal",), max_identities=1, batch_size=batch_size)


def pvc_stage1() -> TrainConfig:
    """Stage 1: only the HarmoView modules learn (backbone frozen) from one frontal reference."""
    config = TrainConfig(
        recipe="pvc-stage1", trainable="harmoview", data=_frontal_only(),
        dropout=ViewDropout(p_text=0.1), steps=2000, lr=1e-4, warmup_steps=100,
    )  # fmt: skip
    return config.use_buckets("480p")


def pvc_stage2(lora: bool = False) -> TrainConfig:
    """Stage 2: the full model (or LoRA on the backbone) adapts to one frontal reference."""
    config = TrainConfig(
        recipe="pvc-stage2", trainable="lora" if lora else "all", data=_frontal_only(),
        dropout=ViewDropout(p_uncond=0.05, p_text=0.1), steps=4000, lr=2e-5, warmup_steps=200,
    )  # fmt: skip
    return config.use_buckets("480p")


def pvc_stage3() -> TrainConfig:
    """Stage 3: multi-view references of the main subject, views dropped at random, sometimes all."""
    config = TrainConfig(
        recipe="pvc-stage3", trainable="all", data=DataConfig(views=VIEW_SLOTS, max_identities=1),
        dropout=ViewDropout(p_view=0.3, p_all_refs=0.05, p_uncond=0.05, p_text=0.1), steps=4000, lr=2e-5,
        warmup_steps=200,
    )  # fmt: skip
    return config.use_buckets("480p")


def pvc_stage4() -> TrainConfig:
    """Stage 4: single/multi-view, 1-3 identities, larger buckets, text-only steps (T2V survives)."""
    config = TrainConfig(
        recipe="pvc-stage4", trainable="all", data=DataConfig(views=VIEW_SLOTS, max_identities=3),
        dropout=ViewDropout(p_view=0.4, p_all_refs=0.1, p_uncond=0.1, p_text=0.1), steps=4000, lr=1e-5,
        warmup_steps=200,
    )  # fmt: skip
    return config.use_buckets("480p+720p")


RECIPES: dict[str, Callable[[], TrainConfig]] = {
    "pvc-stage1": pvc_stage1,
    "pvc-stage2": pvc_stage2,
    "pvc-stage2-lora": lambda: pvc_stage2(lora=True),
    "pvc-stage3": pvc_stage3,
    "pvc-stage4": pvc_stage4,
}


def get_recipe(name: str) -> TrainConfig:
    """A fresh config of recipe `name`."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]()


def apply_overrides(config: TrainConfig, overrides: dict) -> TrainConfig:
    """Set fields from a nested dict ({'lr': 1e-5, 'data': {'batch_size': 2}, 'dropout': {...}}).

    Unknown keys are an error, not silently ignored. 'buckets' switches the bucket preset.
    """
    for key, value in overrides.items():
        if key == "buckets":
            config.use_buckets(value)
        elif key in ("data", "dropout") and isinstance(value, dict):
            target = getattr(config, key)
            names = {f.name for f in dataclasses.fields(target)}
            unknown = set(value) - names
            if unknown:
                raise ValueError(f"unknown {key} settings: {sorted(unknown)}; known: {sorted(names)}")
            for sub, sub_value in value.items():
                setattr(target, sub, tuple(map(_tuple, sub_value)) if isinstance(sub_value, list) else sub_value)
        elif key in {f.name for f in dataclasses.fields(config)}:
            setattr(config, key, _tuple(value) if isinstance(value, list) else value)
        else:
            raise ValueError(f"unknown training setting {key!r}")
    config.__post_init__()
    config.dropout.__post_init__()
    return config


def _tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def read_overrides(path: str | Path) -> dict:
    """A JSON or TOML file of overrides (see `apply_overrides`)."""
    path = Path(path)
    if path.suffix == ".toml":
        return tomllib.loads(path.read_text())
    return json.loads(path.read_text())
