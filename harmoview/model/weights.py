"""Loading and saving weights: Wan native and diffusers (`WanTransformer3DModel`) layouts.

Our parameter names are Wan's native ones. Diffusers names are mapped by a table of templates; the
HarmoView modules have no Wan counterpart and keep our names in either layout. Every checkpoint key
either lands in a parameter or is reported as unexpected; every parameter is either loaded or reported
as missing (backbone) or new (HarmoView) - nothing is dropped silently. A checkpoint on disk is streamed
(`harmoview.model.shards`): judged from its headers, then copied in one tensor at a time, converted to each
parameter's dtype only there; an FSDP2-sharded model takes only its own rows (`load_sharded`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed.tensor import DTensor

from harmoview.model.config import DiTConfig, get_config
from harmoview.model.dit import HarmoViewDiT, init_parameter_, is_harmoview_param
from harmoview.model.shards import CheckpointSource, TensorRef, first_line

if TYPE_CHECKING:
    from harmoview.model.encoders import Encoders

NATIVE, DIFFUSERS = "native", "diffusers"
_ATTN = {"self_attn": "attn1", "cross_attn": "attn2"}
_ATTN_LINEARS = {
    "q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k",
}  # fmt: skip
# (native template, diffusers template); {i} = block index, {p} = weight|bias.
_KEY_TEMPLATES: list[tuple[str, str]] = [
    ("patch_embedding.{p}", "patch_embedding.{p}"),
    ("text_embedding.0.{p}", "condition_embedder.text_embedder.linear_1.{p}"),
    ("text_embedding.2.{p}", "condition_embedder.text_embedder.linear_2.{p}"),
    ("time_embedding.0.{p}", "condition_embedder.time_embedder.linear_1.{p}"),
    ("time_embedding.2.{p}", "condition_embedder.time_embedder.linear_2.{p}"),
    ("time_projection.1.{p}", "condition_embedder.time_proj.{p}"),
    ("head.head.{p}", "proj_out.{p}"),
    ("head.modulation", "scale_shift_table"),
    ("blocks.{i}.modulation", "blocks.{i}.scale_shift_table"),
    ("blocks.{i}.norm3.{p}", "blocks.{i}.norm2.{p}"),  # the cross-attention norm: Wan norm3 = diffusers norm2
    ("blocks.{i}.ffn.0.{p}", "blocks.{i}.ffn.net.0.proj.{p}"),
    ("blocks.{i}.ffn.2.{p}", "blocks.{i}.ffn.net.2.{p}"),
] + [
    (f"blocks.{{i}}.{an}.{ln}.{{p}}", f"blocks.{{i}}.{ad}.{ld}.{{p}}")
    for an, ad in _ATTN.items()
    for ln, ld in _ATTN_LINEARS.items()
]


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern + "$")


_TO_NATIVE = [(_template_regex(d), n) for n, d in _KEY_TEMPLATES]
_TO_DIFFUSERS = [(_template_regex(n), d) for n, d in _KEY_TEMPLATES]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for regex, template in rules:
        m = regex.match(key)
        if m:
            return template.format(**m.groupdict())
    return key if is_harmoview_param(key) else None


def native_to_diffusers_key(key: str) -> str | None:
    """Diffusers name of a native key (HarmoView keys unchanged); None if the key is unknown."""
    return _rename(key, _TO_DIFFUSERS)


def diffusers_to_native_key(key: str) -> str | None:
    """Native name of a diffusers key (HarmoView keys unchanged); None if the key is unknown."""
    return _rename(key, _TO_NATIVE)


def detect_layout(keys: list[str]) -> str:
    """'diffusers' or 'native', judged by keys that exist in only one of the layouts."""
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys):
        return DIFFUSERS
    if any(k.startswith("time_embedding.") or ".self_attn." in k for k in keys):
        return NATIVE
    raise ValueError("cannot tell the checkpoint layout: no Wan native or diffusers keys found")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, a folder of (sharded) safetensors, or a .pt/.pth file, in their
    stored dtype. Holds the whole checkpoint: loading a model streams it instead (`load_weights(model, path)`)."""
    return {ref.key: ref.read() for ref in CheckpointSource.open(path).items()}


EXPORT_ENCODERS_KEY = "harmoview_encoders"
"""safetensors metadata key of an export's encoder record (`Encoders.record()` as JSON)."""


def read_export_encoders(path: str | Path) -> dict | None:
    """The encoder record an export carries (text_len, ViT layers, encoder fingerprints), or None: a Wan
    checkpoint, an older export, a .pt file. Reads the safetensors header only."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path] if path.suffix == ".safetensors" else []
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                text = (f.metadata() or {}).get(EXPORT_ENCODERS_KEY)
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise ValueError(f"{file} is not a readable safetensors file ({first_line(exc)})") from None
        if text:
            return json.loads(text)
    return None


@dataclass
class LoadReport:
    """What a checkpoint load did to each parameter and key."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Backbone parameters the checkpoint lacks (initialised instead)."""
    unexpected: list[str] = field(default_factory=list)
    """Checkpoint keys with no parameter to go to (their original names)."""
    mismatched: list[str] = field(default_factory=list)
    """Keys whose shape differs from the parameter's (not loaded)."""
    new: list[str] = field(default_factory=list)
    """HarmoView parameters the checkpoint lacks: newly initialised, as expected for a Wan checkpoint."""

    @property
    def ok(self) -> bool:
        """Nothing missing, unexpected or mismatched (new HarmoView tensors are expected)."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """Counts, then up to 8 keys of each kind (missing, unexpected, mismatched, new)."""
        lines = [f"layout={self.layout} loaded={len(self.loaded)} new={len(self.new)}"]
        for name in ("missing", "unexpected", "mismatched", "new"):
            keys = getattr(self, name)
            if keys:
                more = f" ... (+{len(keys) - 8})" if len(keys) > 8 else ""
                lines.append(f"{name} ({len(keys)}): {', '.join(keys[:8])}{more}")
        return "\n".join(lines)


def load_weights(
    model: HarmoViewDiT,
    state: dict[str, torch.Tensor] | CheckpointSource | str | Path,
    *,
    strict: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadReport:
    """Load a native- or diffusers-layout checkpoint into `model` (which may live on the meta device).

    `state`: a state dict, or a checkpoint path / `CheckpointSource`, streamed one tensor at a time in its
    stored dtype and converted to the parameter's (`dtype` or its own) only as it is copied in. Parameters
    sharded by FSDP2 (DTensors) receive only their local rows. Parameters still on meta afterwards (new
    HarmoView modules, missing keys when not strict) are materialised on `device` and initialised. With
    `strict`, missing/unexpected/mismatched keys raise before anything is changed (judged from the headers).
    """
    source = _source(state)
    shapes = source.shapes()
    layout = detect_layout(list(shapes))
    real = plain_parameter_names(model)  # plain name -> name in the (possibly wrapped) model
    params = {plain: model.get_parameter(name) for plain, name in real.items()}
    report = LoadReport(layout=layout)
    targets: dict[str, str] = {}  # checkpoint key -> parameter name
    for key, shape in shapes.items():
        name = key if layout == NATIVE else diffusers_to_native_key(key)
        if name is None or name not in params:
            report.unexpected.append(key)
        elif shape != tuple(params[name].shape):
            report.mismatched.append(f"{key} {shape} vs {tuple(params[name].shape)}")
        else:
            targets[key] = name
    loaded = set(targets.values())
    for name in params:
        if name not in loaded:
            (report.new if is_harmoview_param(name) else report.missing).append(name)
    report.loaded = sorted(loaded)
    if strict and not report.ok:
        raise ValueError("checkpoint does not match the model:\n" + report.summary())

    for ref in source.items():
        if ref.key in targets:
            _fill(model, real[targets[ref.key]], ref, device, dtype)
    _materialise_rest(model, device, dtype)
    return report


# Wrapper modules that insert a name part (activation checkpointing, torch.compile, FSDP1, peft's LoRA layer).
_WRAPPER_PARTS = frozenset({"_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module", "base_layer"})


def plain_parameter_names(model: nn.Module) -> dict[str, str]:
    """Plain name (the checkpoint's) -> parameter name, for every parameter but LoRA adapters (no checkpoint
    has them: `load_sharded` initialises them)."""
    return {
        ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS): name
        for name, _ in model.named_parameters()
        if ".lora_" not in name
    }


def _source(state: dict[str, torch.Tensor] | str | Path | CheckpointSource) -> CheckpointSource:
    """A dict or a path as a `CheckpointSource`; anything else is one already (its `shapes()` and `items()`)."""
    if isinstance(state, dict):
        return CheckpointSource(state=state)
    return CheckpointSource.open(state) if isinstance(state, str | Path) else state


def _fill(model: nn.Module, name: str, ref: TensorRef, device: torch.device | str, dtype: torch.dtype | None) -> None:
    """Copy one stored tensor into parameter `name`, converted to its dtype; a DTensor gets its local rows."""
    param = model.get_parameter(name)
    if isinstance(param, DTensor):
        local = param.to_local()
        with torch.no_grad():
            local.copy_(ref.read(local_rows(param)).to(local.dtype))
        return
    _set_parameter(model, name, ref.read().to(device=device, dtype=dtype or param.dtype))


def local_rows(param: DTensor) -> slice | None:
    """The rows of the full tensor that this rank's shard of `param` holds (FSDP2: Shard(0) on a 1-D mesh, chunks
    as torch.chunk cuts them); None when it is replicated (every row)."""
    (placement,) = param.placements
    if placement.is_replicate():
        return None
    if not (placement.is_shard() and placement.dim == 0):
        raise ValueError(f"cannot load into a parameter sharded as {param.placements}")
    rows, world, rank = param.shape[0], param.device_mesh.size(), param.device_mesh.get_local_rank()
    chunk = -(-rows // world)
    start = min(rank * chunk, rows)
    stop = min(start + chunk, rows)
    if param.to_local().shape[0] != stop - start:
        raise ValueError(f"unexpected shard of {tuple(param.shape)}: {param.to_local().shape[0]} rows on rank {rank}")
    return slice(start, stop)


def _set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    old = getattr(module, leaf)
    if old.is_meta or old.device != value.device or old.dtype != value.dtype:
        setattr(module, leaf, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        with torch.no_grad():
            old.copy_(value)


def _materialise_rest(model: HarmoViewDiT, device: torch.device | str, dtype: torch.dtype | None) -> None:
    """Allocate and initialise parameters left on the meta device."""
    names = [n for n, p in model.named_parameters() if p.is_meta]
    for name in names:
        old = model.get_parameter(name)
        empty = torch.empty(old.shape, device=device, dtype=dtype or old.dtype)
        _set_parameter(model, name, empty)
    if names:
        model.initialize_weights(names)


def load_sharded(model: HarmoViewDiT, checkpoint: str | Path | None, *, zero_head: bool = True) -> LoadReport | None:
    """Fill an FSDP2-sharded model (after `to_empty`) from `checkpoint`, or randomly when None; on every rank.

    Each rank streams the checkpoint and reads only its own rows of each tensor (no rank holds the state dict
    or a full fp32 copy). Parameters the checkpoint lacks (new HarmoView modules, all of a random preset, LoRA
    adapters) are initialised one full tensor at a time from rank 0's random state, broadcast first, so every
    rank draws the same numbers and keeps its slice. LoRA adapters get peft's default init (A Kaiming-uniform
    with a = sqrt(5), B zero). `zero_head=False`: a random preset's head gets Xavier weights too.
    """
    import torch.distributed as dist

    report = load_weights(model, checkpoint, strict=True) if checkpoint is not None else None
    loaded = set(report.loaded) if report else set()
    if dist.is_initialized():  # the same draws on every rank
        state = [torch.get_rng_state()]
        dist.broadcast_object_list(state, src=0)
        torch.set_rng_state(state[0])
    plain = {name: p for p, name in plain_parameter_names(model).items()}
    for name, param in model.named_parameters():
        key = plain.get(name)
        if key in loaded:
            continue
        full = torch.empty(param.shape, dtype=param.dtype)  # one parameter's full tensor, on the CPU
        if key is None and ".lora_A." in name:
            torch.nn.init.kaiming_uniform_(full, a=math.sqrt(5))
        elif key is None:
            torch.nn.init.zeros_(full)  # lora_B
        else:
            init_parameter_(key, full, model.config.dim, zero_head=zero_head)
        local = param.to_local() if isinstance(param, DTensor) else param
        rows = local_rows(param) if isinstance(param, DTensor) else None
        with torch.no_grad():
            local.copy_(full if rows is None else full[rows])
    return report


def build_model(
    config: DiTConfig,
    checkpoint: str | Path | dict[str, torch.Tensor] | CheckpointSource | None = None,
    *,
    strict: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[HarmoViewDiT, LoadReport | None]:
    """Build on the meta device and materialise only what is needed: loaded tensors plus new modules.

    A 14B model never exists twice in memory (no random init that is then overwritten), and a checkpoint path
    is streamed one tensor at a time (its state dict is never held whole).
    """
    with torch.device("meta"):
        model = HarmoViewDiT(config)
    if checkpoint is None:
        model.to_empty(device=device).to(dtype)
        model.initialize_weights()
        return model, None
    report = load_weights(model, checkpoint, strict=strict, device=device, dtype=dtype)
    return model, report


def to_layout(model: HarmoViewDiT | dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """A model's (or a native state dict's) tensors in `layout` ('native' or 'diffusers')."""
    source = model.state_dict() if isinstance(model, nn.Module) else model
    state = {k: v.detach().contiguous() for k, v in source.items()}
    if layout == NATIVE:
        return state
    if layout != DIFFUSERS:
        raise ValueError(f"unknown layout {layout!r}")
    return {native_to_diffusers_key(k): v for k, v in state.items()}


def diffusers_config(config: DiTConfig) -> dict:
    """`WanTransformer3DModel` config.json fields for the backbone of `config`."""
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(config.patch_size),
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "text_dim": config.text_dim,
        "freq_dim": config.freq_dim,
        "ffn_dim": config.ffn_dim,
        "num_layers": config.num_layers,
        "cross_attn_norm": config.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads",
        "eps": config.eps,
    }


def save_checkpoint(
    model: HarmoViewDiT | dict[str, torch.Tensor], directory: str | Path, layout: str = DIFFUSERS,
    config: DiTConfig | None = None, encoders: dict | None = None,
) -> Path:  # fmt: skip
    """Write `diffusion_pytorch_model.safetensors`, a layout config.json and our `harmoview.json`.

    `model` may be a native-layout state dict (e.g. gathered from FSDP), then `config` is required.
    `encoders`: the `Encoders.record()` of training, kept in the safetensors metadata (`read_export_encoders`),
    so that the file itself says which encoder settings it needs.
    """
    config = config or model.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {EXPORT_ENCODERS_KEY: json.dumps(encoders)} if encoders else None
    save_file(to_layout(model, layout), str(directory / "diffusion_pytorch_model.safetensors"), metadata=metadata)
    if layout == DIFFUSERS:
        (directory / "config.json").write_text(json.dumps(diffusers_config(config), indent=2))
    (directory / "harmoview.json").write_text(config.to_json())
    return directory


def read_config(directory: str | Path) -> DiTConfig:
    """Our config from `harmoview.json`, else from a diffusers or native Wan `config.json`."""
    directory = Path(directory)
    if (directory / "harmoview.json").exists():
        return DiTConfig.from_dict(json.loads((directory / "harmoview.json").read_text()))
    cfg = json.loads((directory / "config.json").read_text())
    if "num_attention_heads" in cfg:  # diffusers
        return DiTConfig(
            dim=cfg["num_attention_heads"] * cfg["attention_head_dim"], ffn_dim=cfg["ffn_dim"],
            num_heads=cfg["num_attention_heads"], num_layers=cfg["num_layers"],
            in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
            text_dim=cfg["text_dim"], freq_dim=cfg["freq_dim"],
            patch_size=tuple(cfg["patch_size"]), eps=cfg["eps"], cross_attn_norm=cfg["cross_attn_norm"],
        )  # fmt: skip
    return DiTConfig(  # native Wan config.json
        dim=cfg["dim"], ffn_dim=cfg["ffn_dim"], num_heads=cfg["num_heads"], num_layers=cfg["num_layers"],
        in_channels=cfg["in_dim"], out_channels=cfg["out_dim"], text_dim=cfg.get("text_dim", 4096),
        freq_dim=cfg["freq_dim"], patch_size=tuple(cfg.get("patch_size", (1, 2, 2))), eps=cfg["eps"],
        cross_attn_norm=cfg.get("cross_attn_norm", True),
    )  # fmt: skip


def from_pretrained(
    directory: str | Path, config: DiTConfig | None = None, **kwargs: object
) -> tuple[HarmoViewDiT, LoadReport]:
    """Build a model from a checkpoint directory (either layout); `config` overrides the stored one."""
    model, report = build_model(config or read_config(directory), directory, **kwargs)
    return model, report


def resolve_model_dir(path: str | Path) -> Path:
    """The weights folder behind `path`: a previous training run's `final/`, a diffusers Wan pipeline's
    `transformer/`, or `path` itself (a native Wan folder, an exported HarmoView model, a .safetensors file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"initial weights not found: {path} (set --init to a Wan or HarmoView folder)")
    for sub in ("final", "transformer"):
        if (path / sub).is_dir():
            return path / sub
    return path


def initial_config(init: Path | None, preset: str | None, encoders: Encoders) -> tuple[DiTConfig, Path | None]:
    """The config of the model to build, and its weights folder (None = random weights of `preset`).

    Training starts a stage from it and the sampler loads a checkpoint with it. A Wan checkpoint has no
    HarmoView settings: its MFI is sized to the ViT given (or switched off without one). The encoders must
    agree with the model (latent channels, text width, ViT width).
    """
    if init is None:
        if preset is None:
            raise ValueError("no initial weights: set --init WAN_OR_STAGE_DIR (or --preset NAME for random weights)")
        config, directory = get_config(preset), None
    else:
        directory = resolve_model_dir(init)
        config = read_config(directory if directory.is_dir() else directory.parent)
        if not (directory / "harmoview.json").exists():
            vit = encoders.has_vit
            sizes = {"vit_dim": encoders.vit_dim, "vit_num_levels": encoders.vit_num_levels} if vit else {}
            config = config.replace(use_mfi=vit, **sizes)
    encoders.check_model(config)
    return config, directory


def check_export_encoders(
    path: str | Path, encoders: Encoders, *, what: str = "the checkpoint", hint: str = ""
) -> None:
    """ValueError naming every encoder setting on which `encoders` differ from those the export at `path`
    was trained with (an export without a record, e.g. a Wan checkpoint, passes); `hint` ends the message."""
    from harmoview.model.encoders import encoder_record_changes

    directory = resolve_model_dir(path)
    saved = read_export_encoders(directory)
    changes = encoder_record_changes(saved, encoders.record()) if saved else []
    if changes:
        raise ValueError(f"{what} {directory} was trained with other encoder settings: {'; '.join(changes)}{hint}")
