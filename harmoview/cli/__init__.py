"""`harmoview` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harmoview.cli.evaluate import add_evaluate_parsers
from harmoview.cli.generate import add_generate_parser
from harmoview.model.config import PRESETS, get_config


def _info(args: argparse.Namespace) -> int:
    import torch

    from harmoview.model.dit import HarmoViewDiT

    config = get_config(args.preset)
    with torch.device("meta"):  # sizes only: nothing is allocated, so even 14B is instant
        model = HarmoViewDiT(config)
    total = model.num_parameters()
    backbone = model.num_parameters(backbone_only=True)
    print(f"preset: {args.preset}")
    print(config.to_json())
    print(f"parameters: {total:,} (backbone {backbone:,}, HarmoView modules {total - backbone:,})")
    print(f"reference tokens per identity: {config.tokens_per_view} x 5 view slots")
    return 0


def _recipes_help() -> str:
    from harmoview.train.recipes import RECIPES

    lines = ["recipes (the Progressive View Curriculum; each stage starts from the previous: --init PREVIOUS_OUT):"]
    for name, make in RECIPES.items():
        c = make()
        refs = "no references" if not c.use_references else f"views {','.join(c.data.views)}"
        lines.append(
            f"  {name:16s} trains {c.trainable:9s} | {refs}, <= {c.data.max_identities} identities | "
            f"dropout view {c.dropout.p_view} all-refs {c.dropout.p_all_refs} text {c.dropout.p_text} | "
            f"buckets {c.buckets} | lr {c.lr:g}, {c.steps} steps"
        )
    return "\n".join(lines)


def _add_encoder_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("encoders (local folders; nothing is downloaded)")
    g.add_argument("--wan-dir", type=Path, help="a diffusers Wan folder: takes its vae/, text_encoder/, tokenizer/")
    g.add_argument("--vae", type=Path, help="AutoencoderKLWan folder (overrides --wan-dir)")
    g.add_argument("--text-encoder", type=Path, help="UMT5EncoderModel folder (overrides --wan-dir)")
    g.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the text encoder's)")
    g.add_argument("--vit", type=Path, help="open_clip folder of the MFI ViT (none = MFI off for Wan inits)")
    g.add_argument("--vit-layers", type=int, nargs="+", default=[-2], help="ViT depths MFI injects (default -2)")
    g.add_argument("--text-len", type=int, default=512, help="text tokens (Wan: 512)")


def encoder_paths(args: argparse.Namespace):
    from harmoview.model.encoders import EncoderPaths

    paths = EncoderPaths.from_wan_dir(args.wan_dir, vit=args.vit) if args.wan_dir else EncoderPaths(vit=args.vit)
    for name in ("vae", "text_encoder", "tokenizer"):
        if getattr(args, name) is not None:
            setattr(paths, name, getattr(args, name))
    return paths


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
        progress=not args.quiet,
    )  # fmt: skip
    summary = train(config, run)
    if int(os.environ.get("RANK", "0")) == 0:  # every rank returns the summary; one prints it
        print(summary.format())
    return 0


def _cache(args: argparse.Namespace) -> int:
    from harmoview.model.encoders import Encoders, training_dtypes
    from harmoview.train.cache import build_cache
    from harmoview.train.parallel import init_distributed, resolve_bf16
    from harmoview.train.recipes import get_recipe

    dist = init_distributed()
    recipe = get_recipe(args.recipe)
    data = recipe.use_buckets(args.buckets or recipe.buckets).data
    encoders = Encoders.load(
        encoder_paths(args), device=dist.device, text_len=args.text_len, vit_layers=tuple(args.vit_layers),
        **training_dtypes(resolve_bf16("auto", dist.device)),  # the trainer's dtypes: they are in the cache key
    )  # fmt: skip
    data.ref_size = (args.ref_latent_size * encoders.spatial_stride,) * 2
    summary = build_cache(
        args.manifests, args.out, encoders, data, video_roots=args.video_root, rank=dist.rank,
        world_size=dist.world_size, progress=not args.quiet,
    )  # fmt: skip
    print(summary.format())
    return 0


def _cache_parser(sub: argparse._SubParsersAction) -> None:
    from harmoview.train.recipes import BUCKETS, RECIPES

    p = sub.add_parser(
        "cache", help="encode samples once (VAE latents, umT5 and ViT features) for faster training",
        description="Writes <out>/<key>/ with one safetensors file per sample; <key> fingerprints the encoders and "
        "buckets (one cache per bucket preset), so `harmoview train --cache OUT` reads it only when they match. "
        "Resumable; shards over torchrun ranks.",
    )  # fmt: skip
    p.add_argument("--manifests", type=Path, action="append", required=True, help="datakit run dir (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="cache root folder")
    p.add_argument("--recipe", default="pvc-stage4", choices=list(RECIPES), help="takes its buckets (default stage 4)")
    p.add_argument("--buckets", choices=list(BUCKETS), help="bucket preset (overrides the recipe's)")
    p.add_argument("--ref-latent-size", type=int, default=32, help="reference latent side (the model's ref_latent_hw)")
    p.add_argument(
        "--video-root", type=Path, action="append", help="videos of each --manifests (default: run.json src)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_encoder_flags(p)
    p.set_defaults(func=_cache)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harmoview", description="HarmoView identity-consistent video DiT")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a preset's config and parameter counts")
    info.add_argument("--preset", default="wan2.1-t2v-1.3b", choices=sorted(PRESETS))
    info.set_defaults(func=_info)
    _train_parser(sub)
    _cache_parser(sub)
    add_evaluate_parsers(sub)
    add_generate_parser(sub)
    return parser


def _train_parser(sub: argparse._SubParsersAction) -> None:
    from harmoview.train.recipes import BUCKETS, RECIPES

    p = sub.add_parser(
        "train", help="train one stage of the Progressive View Curriculum on datakit manifests",
        description="Rectified-flow training of HarmoView on the `samples` of datakit runs. Resumes from the "
        "latest checkpoint in --out automatically. Multi-GPU: torchrun --nproc_per_node N -m harmoview.cli train ...",
        epilog=_recipes_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--recipe", required=True, choices=list(RECIPES), help="PVC stage (see below)")
    p.add_argument("--manifests", type=Path, action="append", required=True, help="datakit run dir (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="output dir: checkpoints/, final/, metrics.jsonl")
    p.add_argument("--init", type=Path, help="Wan checkpoint folder (native/diffusers) or a previous stage's out dir")
    p.add_argument("--preset", help="random initial weights of this preset when --init is not given (e.g. tiny)")
    p.add_argument(
        "--video-root", type=Path, action="append", help="videos of each --manifests (default: run.json src)"
    )
    p.add_argument("--cache", type=Path, help="read encodings from this `harmoview cache` folder")
    p.add_argument("--config", type=Path, help="JSON/TOML overrides of the recipe (e.g. {data: {batch_size: 2}})")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, help="samples per rank and micro-batch")
    p.add_argument("--buckets", choices=list(BUCKETS))
    p.add_argument("--num-workers", type=int, help="data-loader processes per rank")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--expert", choices=["high", "low"], help="Wan2.2 A14B: train one expert (boundary t=875)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_encoder_flags(p)
    p.set_defaults(func=_train)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `harmoview` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:  # user errors: no traceback
        print(f"harmoview {args.command}: error: {exc}", file=sys.stderr)
        return 1
