"""The ``datakit`` command line: a thin layer over :func:`datakit.build` and friends.

Exit status of ``datakit build``: 0 when the run finished (bad input files do not fail a run: each is
a row in ``errors`` and a status in ``videos``); 1 when the run could not finish (missing source folder
or model, conflicting earlier run, interrupted); 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

BUILD_HELP = """\
Turn a folder of raw footage into multi-view identity manifests (Parquet).

Steps per video (in parallel on Ray): probe, shot split, face detection at --fps, head pose and
view bin, tracks, identity embeddings of the best faces per track. Then, over all videos: identities
linked across videos, reference views per identity and view bin, training samples. Output tables go
to OUT/<table>/*.parquet (videos, clips, faces, tracks, identities, reference_views, samples, errors)
with OUT/run.json. A killed run resumes where it stopped when you run the same command again.

Face stacks (--backend auto picks the first that can run):
  yunet        YuNet detector + FSA-Net head pose + dlib ResNet embedding; needs the model folder
               (--models-dir or DATAKIT_MODELS_DIR, else the per-user folder that
               `datakit models fetch` fills) holding the ONNX files
  dlib         pip-only fallback: dlib HOG detector + 68-landmark pose + dlib embedding (no profiles)
  insightface  a local insightface pack (--insightface-pack or DATAKIT_INSIGHTFACE_PACK)
"""


def _build_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="curate raw videos into manifests",
        description=BUILD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--src", type=Path, required=True, help="folder of videos (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="run folder for the manifests")
    p.add_argument("--config", type=Path, help="JSON or TOML file of BuildConfig fields; flags override it")
    p.add_argument(
        "--fps", type=float, dest="sample_fps", help="frames per second sent to the face detector (default 3)"
    )
    p.add_argument("--workers", type=int, help="parallel video workers (default: one per CPU)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--models-dir",
        type=Path,
        help="folder with YuNet/FSA-Net ONNX files (default: DATAKIT_MODELS_DIR, else `datakit models fetch`'s folder)",
    )
    p.add_argument("--backend", choices=["auto", "yunet", "dlib", "insightface"], help="face stack (default auto)")
    p.add_argument("--insightface-pack", type=Path, help="local insightface model pack folder (buffalo_l, ...)")
    p.add_argument(
        "--detect-max-side",
        type=int,
        help="long side (px) frames are shrunk to for face detection; 0 = full size (default 960)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="delete an earlier run in OUT and start over (default: resume it)",
    )
    _add_caption_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_build(args: argparse.Namespace) -> int:
    from datakit.config import BuildConfig
    from datakit.faces import ModelNotFoundError
    from pipelines.build import RunConflictError, build
    from pipelines.ray_runtime import ClusterConnectionError

    flags = {
        k: getattr(args, k)
        for k in (
            "sample_fps",
            "workers",
            "address",
            "models_dir",
            "backend",
            "insightface_pack",
            "detect_max_side",
            "overwrite",
            *CAPTION_FLAGS,
        )
    }
    try:
        if args.config:
            cfg = BuildConfig.from_file(args.config, src=args.src, out=args.out, **flags)
        else:
            cfg = BuildConfig(src=args.src, out=args.out, **{k: v for k, v in flags.items() if v is not None})
        summary = build(cfg, progress=not args.quiet)
    except (ModelNotFoundError, RunConflictError, ClusterConnectionError, FileNotFoundError, ValueError) as exc:
        print(f"datakit build: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("datakit build: interrupted; run the same command again to resume", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


def _models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the face stacks' model files, or fetch the default stack's",
        description="List each face stack's files: source URL, licence, SHA-256 and whether present. "
        "`datakit models fetch` downloads the default stack's files (the only command that downloads).",
    )
    p.add_argument("--models-dir", type=Path, help="folder to check (default: DATAKIT_MODELS_DIR, else the cache)")
    actions = p.add_subparsers(dest="action")
    fetch = actions.add_parser("fetch", help="download YuNet + FSA-Net, verified by SHA-256 (resumable)")
    fetch.add_argument("--to", type=Path, help="target folder (default: DATAKIT_MODELS_DIR, else the cache)")
    fetch.add_argument("--base-url", help="mirror serving the files by name (default: DATAKIT_MODELS_BASE_URL)")
    fetch.add_argument("--quiet", action="store_true", help="no progress lines")


def _run_models(args: argparse.Namespace) -> int:
    from datakit.faces.base import ModelNotFoundError
    from datakit.faces.model_fetch import fetch_default_stack
    from datakit.faces.model_files import FACE_STACKS, model_status, resolve_models_dir

    if args.action == "fetch":
        folder = resolve_models_dir(args.to)
        try:
            fetched = fetch_default_stack(folder, base_url=args.base_url, progress=not args.quiet)
        except ModelNotFoundError as exc:
            print(f"datakit models fetch: error: {exc}", file=sys.stderr)
            return 1
        print(f"{len(fetched)} file(s) downloaded; default stack ready in {folder}")
        return 0
    folder = resolve_models_dir(args.models_dir)
    print(f"models folder: {folder}")
    for stack in FACE_STACKS:
        print(f"\n{stack.backend}: {stack.summary}")
        for model in stack.files:
            print(f"  {model.name}  [{model_status(model, folder)}]")
            print(f"    {model.what}; licence: {model.licence}")
            if model.url:
                print(f"    url: {model.url}")
            if model.sha256:
                print(f"    sha256: {model.sha256}")
    return 0


CAPTION_HELP = """\
Caption the kept clips of an existing run (clips with no drop_reason), then rewrite `clips` and
`samples` with the captions. The face models do not run again. Clips that already hold a caption of
the same model and prompt version are skipped, so the command resumes where a killed run stopped and
adding a second model or prompt version only adds captions. A clip that cannot be captioned (decode
error, server error after the retries, timeout) becomes an `errors` row (stage caption); the rest go on.

Backends (--captioner):
  qwen2.5-vl  a local Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint folder (--caption-model-dir), through
              transformers, one actor per GPU (bf16), else on the CPU; nothing is downloaded
  openai      an OpenAI-compatible chat-completions server, e.g. vLLM serving Qwen2.5-VL
              (--caption-base-url http://host:8000/v1 --caption-api-model NAME); frames are sent as
              JPEG images (vLLM: --limit-mm-per-prompt '{"image": 8}' or more); the API key, if any, is
              read from the variable named by --caption-api-key-env (default OPENAI_API_KEY)
Settings not given here come from the run's run.json, then the defaults. Prompts: datakit/captions/prompts.py.
"""

CAPTION_FLAGS = (
    "captioner",
    "caption_model_dir",
    "caption_base_url",
    "caption_api_model",
    "caption_api_key_env",
    "caption_prompt_version",
    "caption_frames",
    "caption_max_pixels",
    "caption_max_new_tokens",
    "caption_batch_size",
    "caption_concurrency",
    "caption_timeout_s",
    "caption_retries",
    "caption_retry_backoff_s",
)


def _add_caption_flags(p: argparse.ArgumentParser) -> None:
    from datakit.clips.captions.base import CAPTIONERS
    from datakit.clips.captions.prompts import PROMPTS

    g = p.add_argument_group("captions (datakit.clips.captions)")
    g.add_argument("--captioner", choices=CAPTIONERS, help="caption backend (default none: no captions)")
    g.add_argument("--caption-model-dir", type=Path, help="qwen2.5-vl: local checkpoint folder")
    g.add_argument("--caption-base-url", help="openai: server base URL, e.g. http://localhost:8000/v1")
    g.add_argument("--caption-api-model", help="openai: served model name (recorded as caption_model)")
    g.add_argument("--caption-api-key-env", help="openai: variable holding the API key (default OPENAI_API_KEY)")
    g.add_argument("--caption-prompt-version", choices=sorted(PROMPTS), help="prompt template (default v1)")
    g.add_argument("--caption-frames", type=int, help="frames sampled per clip (default 8)")
    g.add_argument("--caption-max-pixels", type=int, help="pixel budget per frame, width*height (default 200704)")
    g.add_argument("--caption-max-new-tokens", type=int, help="longest caption in tokens (default 256)")
    g.add_argument("--caption-batch-size", type=int, help="clips per model call / per saved batch (default 4)")
    g.add_argument("--caption-concurrency", type=int, help="openai: requests in flight (default 8)")
    g.add_argument("--caption-timeout-s", type=float, help="openai: seconds to wait for an answer (default 120)")
    g.add_argument("--caption-retries", type=int, help="openai: retries on timeout/429/5xx (default 3)")
    g.add_argument("--caption-retry-backoff-s", type=float, help="openai: first retry wait, doubling (default 1)")


def _caption_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "caption",
        help="add captions to an existing run (no face models re-run)",
        description=CAPTION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifests", type=Path, required=True, help="run folder written by `datakit build`")
    p.add_argument("--src", type=Path, help="source folder of the videos (default: the one in run.json)")
    p.add_argument("--workers", type=int, help="CPUs for a local Ray (default: all)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    _add_caption_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_caption(args: argparse.Namespace) -> int:
    from pipelines.clip_stages import caption_run

    overrides = {k: getattr(args, k) for k in (*CAPTION_FLAGS, "src", "workers", "address")}
    try:
        summary = caption_run(args.manifests, progress=not args.quiet, **overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"datakit caption: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("datakit caption: interrupted; run the same command again to resume", file=sys.stderr)
        return 1
    print(f"datakit caption -> {args.manifests}\n  {summary.format()}")
    return 0


def _filter_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "filter",
        help="re-apply the clip filters to a finished run (no model re-runs)",
        description="Set clips.drop_reason from the stored clip quality scores with new thresholds and rebuild "
        "`samples` from the kept clips; faces, tracks, identities and embeddings stay as they are. "
        "The thresholds are the run's own (run.json), changed by --config and then --set; run.json is "
        "updated so that a later resumed `datakit build` agrees.",
    )
    p.add_argument("--manifests", type=Path, required=True, help="run folder of a finished `datakit build`")
    p.add_argument("--config", type=Path, help="JSON or TOML file; its filter_* fields are applied")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one threshold, e.g. filter_min_brightness=0.1 (none = off); repeatable",
    )


def _run_filter(args: argparse.Namespace) -> int:
    from pipelines.clip_stages import refilter

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"datakit filter: error: --set {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        overrides[key.strip()] = value.strip()
    try:
        summary = refilter(args.manifests, args.config, overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"datakit filter: error: {exc}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``datakit`` command."""
    from datakit.cli.tools import add_commands as add_query_commands

    parser = argparse.ArgumentParser(prog="datakit", description="Multi-view identity video curation.")
    sub = parser.add_subparsers(dest="command", required=True)
    _build_parser(sub)
    _models_parser(sub)
    _filter_parser(sub)
    _caption_parser(sub)
    add_query_commands(sub)  # query, report, split, leakage (datakit/query_cli.py)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "build":
        return _run_build(args)
    if args.command == "models":
        return _run_models(args)
    if args.command == "filter":
        return _run_filter(args)
    if args.command == "caption":
        return _run_caption(args)
    if hasattr(args, "handler"):
        return args.handler(args)
    parser.error(f"unknown command {args.command}")
    return 2
