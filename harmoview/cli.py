"""`harmoview` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys

from harmoview.config import PRESETS, get_config


def _info(args: argparse.Namespace) -> int:
    import torch

    from harmoview.model import HarmoViewDiT

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


def _not_yet(name: str, issue: str):
    def run(args: argparse.Namespace) -> int:
        print(f"harmoview {name}: not yet implemented (arrives with {issue}).", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harmoview", description="HarmoView identity-consistent video DiT")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a preset's config and parameter counts")
    info.add_argument("--preset", default="wan2.1-t2v-1.3b", choices=sorted(PRESETS))
    info.set_defaults(func=_info)
    sub.add_parser("train", help="PVC training (not yet)").set_defaults(func=_not_yet("train", "the trainer issue"))
    sub.add_parser("generate", help="sampling (not yet)").set_defaults(func=_not_yet("generate", "the sampler issue"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `harmoview` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
