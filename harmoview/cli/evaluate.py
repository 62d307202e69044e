"""`harmoview cases` and `harmoview evaluate`: thin parsers over harmoview.evaluate's API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harmoview.cli.common import add_models_dir_flag, api_default
from harmoview.evaluate.runner import EvalConfig


def _cases(args: argparse.Namespace) -> int:
    from harmoview.evaluate.assemble import cases_from_run, read_identity_list

    ids = read_identity_list(args.identities)
    cases = cases_from_run(args.manifests, ids, args.out, args.images_dir, per_clip=args.per_clip)
    num_refs = sum(len(i.references) for c in cases for i in c.identities)
    print(f"wrote {len(cases)} cases for {len(ids)} identities ({num_refs} reference images) to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from harmoview.evaluate.runner import evaluate

    config = EvalConfig(
        sample_fps=args.sample_fps, max_frames=args.max_frames, models_dir=args.models_dir,
        insightface_pack=args.insightface_pack, clip=args.clip,
    )  # fmt: skip
    summary = evaluate(args.cases, args.videos, args.out, config)
    print(json.dumps({"statuses": summary["statuses"], **{k: m["mean"] for k, m in summary["metrics"].items()}}))
    print(f"report: {Path(args.out) / 'index.html'}")
    return 0


def _add_cases_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cases",
        help="assemble a benchmark case file from a datakit run's identities",
        description="One case per chosen identity: references = its best crop per view (written as JPEGs), "
        "prompt = a caption of one of its clips, else a neutral default.",
    )
    p.add_argument("--manifests", "-m", type=Path, required=True, help="a datakit run directory")
    p.add_argument("--identities", type=Path, required=True, help="file with one identity_id per line")
    p.add_argument("--out", type=Path, required=True, help="the case file to write (JSONL)")
    p.add_argument("--images-dir", type=Path, help="where reference JPEGs go (default: references/ beside --out)")
    p.add_argument("--per-clip", action="store_true", help="one case per (identity, clip), each with its caption")
    p.set_defaults(func=_cases)


def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score generated videos against a case file (FaceSim, multi-view FaceSim, motion, text)",
        description="Videos are matched by name: <videos>/<case_id>.mp4. Writes summary.json, "
        "cases/<case_id>.json, index.html and overview.png to --out.",
    )
    p.add_argument("--cases", type=Path, required=True, help="case file (JSONL)")
    p.add_argument("--videos", type=Path, required=True, help="folder of <case_id>.mp4")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_models_dir_flag(p, without="an error, unless --insightface-pack is given")
    p.add_argument("--insightface-pack", type=Path, help="insightface pack folder: ArcFace embeddings (FaceSim-Arc)")
    p.add_argument("--clip", type=Path, help="open_clip model folder for text alignment (default: not measured)")
    p.add_argument(
        "--sample-fps", type=float, default=api_default(EvalConfig, "sample_fps"),
        help="frames scored per second (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--max-frames", type=int, default=api_default(EvalConfig, "max_frames"),
        help="at most this many frames per video (default %(default)s)",
    )  # fmt: skip
    p.set_defaults(func=_evaluate)


def add_evaluate_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the `cases` and `evaluate` subcommands to the `harmoview` parser."""
    _add_cases_parser(subparsers)
    _add_evaluate_parser(subparsers)
