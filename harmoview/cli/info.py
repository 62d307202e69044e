"""`harmoview info`: a preset's config and parameter counts, without allocating its weights."""

from __future__ import annotations

import argparse

from harmoview.model.config import PRESETS, get_config

DEFAULT_PRESET = "wan2.1-t2v-1.3b"


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


def add_info_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `info` to the `harmoview` subcommands."""
    p = subparsers.add_parser("info", help="print a preset's config and parameter counts")
    p.add_argument(
        "--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="model preset (default %(default)s)"
    )
    p.set_defaults(func=_info)
