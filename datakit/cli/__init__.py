"""The ``datakit`` command line: a thin layer over the Python API (:func:`pipelines.build` and the tools).

One convention for every command: its parser is registered with its runner (``set_defaults(func=...)``,
:func:`datakit.cli.flags.add_command`); the runner prints results and returns the exit status, and lets
user errors (a bad path or run folder, an OS error such as a read-only or full disk, naming its path)
propagate to :func:`main`, which prints them as one line ``datakit <command>: error: <message>`` and exits 1.
A bad command line (argparse) or a bad setting (:class:`datakit.config.ConfigError`, from a flag, a
``--config`` file or ``--set``) is a usage error: one line naming the field and its value, exit 2.

Exit status of ``datakit build``: 0 when the run finished (bad input files do not fail a run: each is
a row in ``errors`` and a status in ``videos``); 1 when the run could not finish (missing source folder
or model, conflicting earlier run, unreachable cluster, unwritable --out, interrupted); 2 for a bad
command line or setting.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from datakit.cli.flags import (
    MODELS_DIR_DEFAULT,
    add_caption_flags,
    add_command,
    add_config_flag,
    add_face_stack_flags,
    add_manifests,
    add_models_dir,
    add_quiet,
    add_ray_flags,
    config_overrides,
)
from datakit.cli.tools import add_commands as add_tool_commands
from datakit.config import BuildConfig, ConfigError

__all__ = ["main", "make_parser"]

BUILD_HELP = """\
Turn a folder of raw footage into multi-view identity manifests (Parquet).

Steps per video (in parallel on Ray): probe, shot split, face detection at --fps, head pose and
view bin, tracks, identity embeddings of the best faces per track. Then, over all videos: identities
linked across videos, reference views per identity and view bin, training samples. Output tables go
to OUT/<table>/*.parquet (videos, clips, faces, tracks, identities, reference_views, samples, errors)
with OUT/run.json. A killed run resumes where it stopped when you run the same command again.

Face stacks (--backend auto takes the first that can run; the summary names it, its notes say why):
  insightface  an insightface (ArcFace) pack: --insightface-pack or DATAKIT_INSIGHTFACE_PACK, or one
               that `datakit models fetch --pack NAME --accept-licence` put in the model folder
               (non-commercial research licence); needs the insightface package
  yunet        YuNet detector + FSA-Net head pose + dlib ResNet embedding; needs the model folder
               (--models-dir or DATAKIT_MODELS_DIR, else the per-user folder that
               `datakit models fetch` fills) holding the ONNX files
  dlib         pip-only fallback: dlib HOG detector + 68-landmark pose + dlib embedding (no profiles)
"""


def _pipeline_errors() -> tuple[type[BaseException], ...]:
    """User errors of the commands that run ``pipelines``: a conflicting earlier run, an unreachable cluster."""
    from pipelines.ray_runtime import ClusterConnectionError
    from pipelines.resume import RunConflictError

    return RunConflictError, ClusterConnectionError


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "build",
        _run_build,
        resumable=True,
        user_errors=_pipeline_errors,
        help="curate raw videos into manifests",
        description=BUILD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--src", type=Path, required=True, metavar="DIR", help="folder of videos (searched recursively)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder for the manifests")
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="JSON or TOML file of BuildConfig fields; flags override it"
    )
    add_config_flag(p, "sample_fps", "frames per second sent to the face detector", flag="--fps", type=float)
    add_ray_flags(p, workers_help="parallel video workers (default: one per CPU)")
    add_face_stack_flags(p, recorded=False)
    p.add_argument(
        "--overwrite",
        action="store_true",
        default=None,  # None, not False: an `overwrite` in --config stays unless the flag is given
        help="delete an earlier run in OUT and start over (default: resume it)",
    )
    p.add_argument(
        "--reconcile-src",
        action="store_true",
        help="resume a run made from another --src: removes the videos no longer present in the new source"
        " from the run and says how many (default: another --src is refused)",
    )
    add_caption_flags(p)
    add_quiet(p)


def _run_build(args: argparse.Namespace) -> int:
    from pipelines.build import build

    flags = config_overrides(args)
    if args.config:
        cfg = BuildConfig.from_file(args.config, **flags)
    else:
        cfg = BuildConfig(**{k: v for k, v in flags.items() if v is not None})
    print(build(cfg, progress=not args.quiet, reconcile_src=args.reconcile_src).format())
    return 0


MODELS_FETCH_HELP = """\
Download model files into the models folder, each verified by SHA-256, renamed into place only then,
resumed when run again after an interruption; files already there and intact are skipped.

Without --pack: the default stack's YuNet + FSA-Net ONNX files (dlib's come with its wheel).
With --pack NAME: an insightface (ArcFace) pack into <folder>/NAME/, which `--backend auto` then prefers.
Its licence is printed first: the insightface models are for non-commercial research only, and nothing
is downloaded unless --accept-licence is given. buffalo_l / antelopev2 have no published checksum, so
they need --sha256 HEX of a copy you trust; insightface_sc_int8 (the int8 MobileFaceNet pack this project
calibrates on) is pinned.
"""


def _add_models(sub: argparse._SubParsersAction) -> None:
    from datakit.faces.model_files import INSIGHTFACE_PACKS

    p = add_command(
        sub,
        "models",
        _run_models_list,
        help="list the face stacks' model files, or fetch the default stack's or an insightface pack",
        description="List each face stack's files and the insightface packs: source URL, licence, SHA-256 and"
        " whether present. `datakit models fetch` downloads them (the only command that downloads).",
    )
    add_models_dir(p, f"folder to check (default: {MODELS_DIR_DEFAULT})")
    actions = p.add_subparsers(dest="action", title="actions", metavar="{fetch}")
    fetch = add_command(
        actions,
        "fetch",
        _run_models_fetch,
        help="download YuNet + FSA-Net, or an insightface pack (--pack), verified by SHA-256 (resumable)",
        description=MODELS_FETCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("--to", type=Path, metavar="DIR", help=f"target folder (default: {MODELS_DIR_DEFAULT})")
    fetch.add_argument(
        "--base-url", metavar="URL", help="mirror serving the files by name (default: DATAKIT_MODELS_BASE_URL)"
    )
    fetch.add_argument(
        "--pack", choices=[pack.name for pack in INSIGHTFACE_PACKS], help="fetch this insightface pack instead"
    )
    fetch.add_argument(
        "--accept-licence",
        "--accept-license",
        action="store_true",
        help="accept the pack's licence (insightface models: non-commercial research only)",
    )
    fetch.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of a pack archive that has none pinned")
    add_quiet(fetch)


def _run_models_list(args: argparse.Namespace) -> int:
    from datakit.faces.model_files import FACE_STACKS, INSIGHTFACE_PACKS, model_status, resolve_models_dir

    folder = resolve_models_dir(args.models_dir)
    print(f"models folder: {folder}")
    for stack in FACE_STACKS:
        print(f"\n{stack.backend}: {stack.summary}")
        for model in stack.files:
            _print_model(model, model_status(model, folder))
    print("\ninsightface packs (`datakit models fetch --pack NAME --accept-licence`; `--backend auto` prefers them):")
    for pack in INSIGHTFACE_PACKS:
        _print_pack(pack, folder)
    return 0


def _print_model(model, status: str) -> None:
    print(f"  {model.name}  [{status}]")
    print(f"    {model.what}; licence: {model.licence}")
    if model.url:
        print(f"    url: {model.url}")
    if model.sha256:
        size = f" ({model.size_bytes} bytes)" if model.size_bytes else ""
        print(f"    sha256: {model.sha256}{size}")


def _print_pack(pack, folder: Path) -> None:
    from datakit.faces.model_files import fetched_pack_status

    print(f"  {pack.name}  [{fetched_pack_status(folder / pack.name)}]")
    print(f"    {pack.what}")
    print(f"    licence: {pack.licence}: {' '.join(pack.licence_urls)}")
    for model in pack.downloads:
        print(f"    url: {model.url}")
        if model.sha256:
            print(f"      sha256: {model.sha256} ({model.size_bytes} bytes)")
    if pack.is_archive and not pack.downloads[0].sha256:
        print(f"    sha256: none pinned: {pack.checksum_source}")


def _run_models_fetch(args: argparse.Namespace) -> int:
    from datakit.faces.model_fetch import fetch_default_stack, fetch_insightface_pack, licence_notice
    from datakit.faces.model_files import insightface_pack, resolve_models_dir

    folder = resolve_models_dir(args.to)
    if args.pack:
        print(licence_notice(insightface_pack(args.pack)), flush=True)  # always shown, --quiet or not
        kwargs = {"accept_licence": args.accept_licence, "sha256": args.sha256, "progress": not args.quiet}
        pack_dir = fetch_insightface_pack(args.pack, folder, base_url=args.base_url, **kwargs)
        print(f"insightface pack {args.pack} ready in {pack_dir}; `--backend auto` now takes it")
        return 0
    if args.accept_licence or args.sha256:
        raise ValueError("--accept-licence and --sha256 go with --pack NAME")
    fetched = fetch_default_stack(folder, base_url=args.base_url, progress=not args.quiet)
    print(f"{len(fetched)} file(s) downloaded; default stack ready in {folder}")
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
Settings not given here come from the run's run.json, then the defaults. Prompts: datakit/clips/captions/prompts.py.
"""


def _add_caption(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "caption",
        _run_caption,
        resumable=True,
        user_errors=_pipeline_errors,
        help="add captions to an existing run (no face models re-run)",
        description=CAPTION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_manifests(p)
    p.add_argument("--src", type=Path, metavar="DIR", help="source folder of the videos (default: the one in run.json)")
    add_ray_flags(p, workers_help="CPUs for a local Ray (default: all)")
    add_caption_flags(p)
    add_quiet(p)


def _run_caption(args: argparse.Namespace) -> int:
    from pipelines.clip_stages import caption_run

    summary = caption_run(args.manifests, progress=not args.quiet, **config_overrides(args))
    print(f"datakit caption -> {args.manifests}\n  {summary.format()}")
    return 0


def _key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--set``, split and stripped; anything else is a bad command line."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value.strip()


def _add_filter(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "filter",
        _run_filter,
        user_errors=_pipeline_errors,
        help="re-apply the clip filters to a finished run (no model re-runs)",
        description="Set clips.drop_reason from the stored clip quality scores with new thresholds and rebuild "
        "`samples` from the kept clips; faces, tracks, identities and embeddings stay as they are. "
        "The thresholds are the run's own (run.json), changed by --config and then --set; run.json is "
        "updated so that a later resumed `datakit build` agrees.",
    )
    add_manifests(p)
    p.add_argument("--config", type=Path, metavar="FILE", help="JSON or TOML file; its filter_* fields are applied")
    p.add_argument(
        "--set",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one threshold, e.g. filter_min_brightness=0.1 (none = off); repeatable",
    )


def _run_filter(args: argparse.Namespace) -> int:
    from pipelines.clip_stages import refilter

    print(refilter(args.manifests, args.config, dict(args.set)).format())
    return 0


def _user_errors(args: argparse.Namespace) -> tuple[type[BaseException], ...]:
    """What a user can cause, shown as one line: bad paths and settings (OSError, ValueError: not a run,
    no face in a photo, ...), missing model files, and the command's own (``add_command(user_errors=)``)."""
    from datakit.faces.base import ModelNotFoundError

    own = args.user_errors() if args.user_errors else ()
    return (OSError, ValueError, ModelNotFoundError, *own)


def make_parser() -> argparse.ArgumentParser:
    """The parser of the ``datakit`` command and all its subcommands."""
    parser = argparse.ArgumentParser(prog="datakit", description="Multi-view identity video curation.")
    sub = parser.add_subparsers(dest="command", required=True, title="commands")
    _add_build(sub)
    _add_models(sub)
    _add_filter(sub)
    _add_caption(sub)
    add_tool_commands(sub)  # query, report, split, leakage (datakit/cli/tools.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``datakit`` command; returns the exit status."""
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a bad command line that argparse has explained (2)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        again = "; run the same command again to resume" if args.resumable else ""
        print(f"{args.prog}: interrupted{again}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # a bad setting (flag, --config file, --set): a usage error, before any work
        print(f"{args.prog}: error: {exc}", file=sys.stderr)
        return 2
    except _user_errors(args) as exc:  # evaluated only when something was raised
        print(f"{args.prog}: error: {_message(exc, args)}", file=sys.stderr)
        return 1
    except Exception as exc:
        runtime = sys.modules.get("pipelines.ray_runtime")  # loaded when the command ran on Ray
        os_error = runtime.os_error_of(exc) if runtime else None
        if os_error is None:
            raise  # a bug: its traceback is the report
        print(f"{args.prog}: error: a Ray worker failed: {_message(os_error, args)}", file=sys.stderr)
        return 1


def _message(exc: BaseException, args: argparse.Namespace) -> str:
    """One line for a user error. An OS error (read-only or full disk, no permission, a file where a folder
    should be) names its path; when the OS gave none (a full disk while writing), the command's run folder."""
    if not isinstance(exc, OSError) or exc.errno is None or not exc.strerror:
        return str(exc)  # our own errors (NotARunError, ...) are sentences that name their path
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    if paths:
        return f"{exc.strerror}: {' -> '.join(paths)}"
    run = getattr(args, "out", None) or getattr(args, "manifests", None)
    run = run[0] if isinstance(run, list) else run
    return f"{exc.strerror} (run folder {run})" if run else exc.strerror
