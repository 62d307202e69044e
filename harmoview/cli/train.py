"""`harmoview train` and `harmoview cache`: thin parsers over `harmoview.train`'s API."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from harmoview.cli.common import add_encoder_flags, add_quiet_flag, add_run_flags, api_default, encoder_paths
from harmoview.flow import EXPERTS
from harmoview.model.config import DiTConfig
from harmoview.train.recipes import BUCKETS, RECIPES, TrainConfig


def _recipes_help() -> str:
    lines = ["recipes (the Progressive View Curriculum; each stage starts from the previous: --init PREVIOUS_OUT):"]
    for name, make in RECIPES.items():
        c = make()
        refs = "no references" if not c.use_references else f"views {','.join(c.data.views)}"
        lines.append(
            f"  {name:16s} trains {c.trainable:9s} | {refs}, <= {c.data.max_identities} identities | "
            f"dropout view {c.dropout.p_view} all-refs {c.dropout.p_all_refs} uncond {c.dropout.p_uncond} "
            f"text {c.dropout.p_text} | "
            f"buckets {c.buckets} | lr {c.lr:g}, {c.steps} steps"
        )
    return "\n".join(lines)


def _recipe_default(setting: Callable[[TrainConfig], object]) -> str:
    """'default X' when every recipe sets the same X, else a pointer to the recipe list of the epilog."""
    values = {setting(make()) for make in RECIPES.values()}
    if len(values) == 1:
        return f"default {values.pop()}"
    return "default: the recipe's, listed below"


def _train(args: argparse.Namespace) -> int:
    from harmoview.train.recipes import apply_overrides, get_recipe, read_overrides
    from harmoview.train.trainer import TrainRun, train

    config = get_recipe(args.recipe)
    if args.config:
        apply_overrides(config, read_overrides(args.config))
    flags = {"steps": args.steps, "lr": args.lr, "buckets": args.buckets, "num_workers": args.num_workers,
             "checkpoint_every": args.checkpoint_every, "seed": args.seed, "expert": args.expert,
             "activation_checkpointing": args.activation_checkpointing or None}  # fmt: skip
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.batch_size is not None:
        overrides["data"] = {"batch_size": args.batch_size}
    apply_overrides(config, overrides)
    run = TrainRun(
        manifests=args.manifests, out=args.out, encoders=encoder_paths(args), init=args.init, preset=args.preset,
        video_roots=args.video_root, cache=args.cache, text_len=args.text_len, vit_layers=tuple(args.vit_layers),
        progress=not args.quiet, allow_config_change=args.allow_config_change,
    )  # fmt: skip
    summary = train(config, run)
    if int(os.environ.get("RANK", "0")) == 0:  # every rank returns the summary; one prints it
        print(summary.format())
    return 0


def _add_recipe_overrides(p: argparse.ArgumentParser) -> None:
    """Flags that override one setting of the recipe (None = keep the recipe's)."""
    g = p.add_argument_group("recipe overrides (applied after --config)")
    g.add_argument("--steps", type=int, help=f"optimiser steps of this stage ({_recipe_default(lambda c: c.steps)})")
    g.add_argument("--lr", type=float, help=f"peak AdamW learning rate ({_recipe_default(lambda c: c.lr)})")
    g.add_argument(
        "--batch-size", type=int,
        help=f"samples per rank and micro-batch ({_recipe_default(lambda c: c.data.batch_size)})",
    )  # fmt: skip
    g.add_argument("--buckets", choices=list(BUCKETS), help=f"bucket preset ({_recipe_default(lambda c: c.buckets)})")
    g.add_argument(
        "--num-workers", type=int,
        help=f"data-loader processes per rank ({_recipe_default(lambda c: c.num_workers)})",
    )  # fmt: skip
    g.add_argument(
        "--checkpoint-every", type=int,
        help=f"steps between checkpoints ({_recipe_default(lambda c: c.checkpoint_every)})",
    )  # fmt: skip
    g.add_argument("--seed", type=int, help=f"seed of noise, sigmas and dropout ({_recipe_default(lambda c: c.seed)})")
    g.add_argument("--expert", choices=list(EXPERTS), help="Wan2.2 A14B: train one expert (boundary t=875)")
    g.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations")


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `train` to the `harmoview` subcommands."""
    p = subparsers.add_parser(
        "train", help="train one stage of the Progressive View Curriculum on datakit manifests",
        description="Rectified-flow training of HarmoView on the `samples` of datakit runs. Resumes from the "
        "latest checkpoint in --out automatically. Multi-GPU: torchrun --nproc_per_node N -m harmoview.cli train ...",
        epilog=_recipes_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--recipe", required=True, choices=list(RECIPES), help="PVC stage (see below)")
    add_run_flags(p)
    p.add_argument("--out", type=Path, required=True, help="output dir: checkpoints/, final/, metrics.jsonl")
    p.add_argument("--init", type=Path, help="Wan checkpoint folder (native/diffusers) or a previous stage's out dir")
    p.add_argument("--preset", help="random initial weights of this preset when --init is not given (e.g. tiny)")
    p.add_argument(
        "--cache", type=Path,
        help="read encodings from this `harmoview cache` folder (it must exist and match the encoders and buckets; "
        "samples missing from it are skipped and counted as uncached)",
    )  # fmt: skip
    p.add_argument("--config", type=Path, help="JSON/TOML overrides of the recipe (e.g. {data: {batch_size: 2}})")
    p.add_argument(
        "--allow-config-change", action="store_true",
        help="resume although the recipe, config or encoder settings differ from the checkpoint's in --out (or "
        "--init's encoder settings differ); without it such a resume is refused, naming the differences. "
        "A larger --steps, --num-workers, --checkpoint-every and --activation-checkpointing need no flag",
    )  # fmt: skip
    _add_recipe_overrides(p)
    add_quiet_flag(p)
    add_encoder_flags(p)
    p.set_defaults(func=_train)


def _cache(args: argparse.Namespace) -> int:
    from harmoview.model.encoders import Encoders, training_dtypes
    from harmoview.train.cache import build_cache
    from harmoview.train.parallel import init_distributed, resolve_bf16
    from harmoview.train.recipes import get_recipe

    dist = init_distributed()
    presets = cache_presets(args.recipe, args.buckets)
    encoders = Encoders.load(
        encoder_paths(args), device=dist.device, text_len=args.text_len, vit_layers=tuple(args.vit_layers),
        **training_dtypes(resolve_bf16("auto", dist.device)),  # the trainer's dtypes: they are in the cache key
    )  # fmt: skip
    for preset, recipe in presets.items():  # one cache folder per bucket preset, all under --out
        data = get_recipe(recipe).use_buckets(preset).data
        data.ref_size = (args.ref_latent_size * encoders.spatial_stride,) * 2
        summary = build_cache(
            args.manifests, args.out, encoders, data, video_roots=args.video_root, rank=dist.rank,
            world_size=dist.world_size, progress=not args.quiet,
        )  # fmt: skip
        print(f"buckets {preset}: {summary.format()}")  # each rank: its share
    return 0


def cache_presets(recipes: list[str] | None, buckets: str | None) -> dict[str, str]:
    """{bucket preset: a recipe using it} that `harmoview cache` fills: --buckets alone, else every distinct
    preset of the given recipes (default: every PVC stage, so that one command serves the whole curriculum)."""
    names = recipes or list(RECIPES)
    if buckets:
        return {buckets: names[0]}
    presets: dict[str, str] = {}
    for name in names:
        presets.setdefault(RECIPES[name]().buckets, name)
    return presets


def add_cache_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `cache` to the `harmoview` subcommands."""
    p = subparsers.add_parser(
        "cache", help="encode samples once (VAE latents, umT5 and ViT features) for faster training",
        description="Writes <out>/<key>/ with one safetensors file per sample; <key> fingerprints the encoders and "
        "buckets (one cache per bucket preset), so `harmoview train --cache OUT` reads it only when they match. "
        "By default it fills the buckets of every PVC stage (480p for stages 1-3, 480p+720p for stage 4), each in "
        "its own <key>/; --recipe limits it to those stages' buckets. Resumable; shards over torchrun ranks.",
    )  # fmt: skip
    add_run_flags(p)
    p.add_argument("--out", type=Path, required=True, help="cache root folder")
    p.add_argument(
        "--recipe", action="append", choices=list(RECIPES),
        help="fill the buckets of this stage (repeatable; default: every stage's buckets)",
    )  # fmt: skip
    p.add_argument("--buckets", choices=list(BUCKETS), help="fill only this bucket preset (overrides --recipe)")
    p.add_argument(
        "--ref-latent-size", type=int, default=api_default(DiTConfig, "ref_latent_hw")[0],
        help="reference latent side, the model's ref_latent_hw (default %(default)s)",
    )  # fmt: skip
    add_quiet_flag(p)
    add_encoder_flags(p)
    p.set_defaults(func=_cache)
