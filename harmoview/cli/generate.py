"""`harmoview generate`: a video from a prompt and reference photos, thin over `HarmoViewPipeline`.

    harmoview generate --ckpt RUN/final --wan-dir Wan2.1-T2V-1.3B-Diffusers --vit VIT \\
        --prompt "a man talks to the camera" --ref obama.jpg --ref left:obama_side.jpg \\
        --identity --ref biden.jpg --out out.mp4

Each `--identity` starts the next person's group of `--ref` photos. Photos are routed into view slots by
their estimated yaw (`harmoview.photo_refs`); `VIEW:PHOTO` chooses the slot by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harmoview.cli.common import add_encoder_flags, add_models_dir_flag, add_quiet_flag, api_default, encoder_paths
from harmoview.model.config import VIEW_SLOTS
from harmoview.pipeline import HarmoViewPipeline
from harmoview.sampling import SAMPLERS


class _RefAction(argparse.Action):
    """--ref appends to the current identity's group; --identity opens the next group."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        groups = list(getattr(namespace, self.dest, None) or [[]])
        if self.nargs == 0:  # --identity
            if groups[-1]:
                groups.append([])
        else:
            groups[-1] = [*groups[-1], values]
        setattr(namespace, self.dest, groups)


def _add_reference_flags(p: argparse.ArgumentParser) -> None:
    refs = p.add_argument_group("references")
    refs.add_argument("--ref", dest="identities", action=_RefAction, metavar="[VIEW:]PHOTO",
                      help="a reference photo of the current identity (repeatable)")  # fmt: skip
    refs.add_argument("--identity", dest="identities", action=_RefAction, nargs=0,
                      help="start the next identity's group of --ref photos")  # fmt: skip
    refs.add_argument("--face", type=int, help="which face (0 = leftmost) in photos that show several")
    add_models_dir_flag(refs, without="the pip-only dlib stack")


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """Sampling settings; the defaults are those of `HarmoViewPipeline.__call__` and `.save`."""

    def default(name: str) -> object:
        return api_default(HarmoViewPipeline.__call__, name)

    s = p.add_argument_group("sampling")
    s.add_argument("--frames", type=int, default=default("num_frames"), help="frames, 1 + 4k (default %(default)s)")
    s.add_argument("--height", type=int, default=default("height"), help="pixels (default %(default)s)")
    s.add_argument("--width", type=int, default=default("width"), help="pixels (default %(default)s)")
    s.add_argument("--steps", type=int, default=default("steps"), help="sampling steps (default %(default)s)")
    s.add_argument("--sampler", choices=SAMPLERS, default=default("sampler"), help="ODE solver (default %(default)s)")
    s.add_argument(
        "--shift", type=float, default=default("shift"), help="flow shift of the sigma schedule (default %(default)s)"
    )
    s.add_argument(
        "--ref-scale", type=float, default=default("ref_scale"),
        help="guidance towards the references (1 = off; default %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--text-scale", type=float, default=default("text_scale"),
        help="guidance towards the prompt (1 = off; default %(default)s)",
    )  # fmt: skip
    s.add_argument("--seed", type=int, default=default("seed"), help="noise seed (default %(default)s)")
    s.add_argument(
        "--fps", type=float, default=api_default(HarmoViewPipeline.save, "fps"),
        help="frame rate of the mp4 (default %(default)s)",
    )  # fmt: skip
    s.add_argument("--device", help="torch device (default: cuda when available)")


def add_generate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `generate` to the `harmoview` subcommands; returns the new parser."""
    p = subparsers.add_parser(
        "generate", help="sample a video from a prompt and reference photos",
        description="Generate an mp4 (plus OUT.json, e.g. out.mp4.json, with its settings) with a HarmoView "
        "checkpoint. Reference photos are face-detected, cropped and put into view slots by their yaw; "
        f"VIEW:PHOTO sets the slot by hand (views: {', '.join(VIEW_SLOTS)}).",
    )  # fmt: skip
    p.add_argument("--ckpt", type=Path, required=True, help="HarmoView checkpoint (export, training run or Wan folder)")
    p.add_argument("--low-noise-ckpt", type=Path, help="Wan2.2 A14B: the low-noise expert (used for t < 875)")
    p.add_argument("--prompt", required=True, help="what the video shows")
    p.add_argument(
        "--negative-prompt", default=api_default(HarmoViewPipeline.__call__, "negative_prompt"),
        help="negative prompt (default: the empty prompt)",
    )  # fmt: skip
    _add_reference_flags(p)
    _add_sampling_flags(p)
    p.add_argument(
        "--out", type=Path, required=True, help="output mp4 (its settings go to OUT.json, e.g. out.mp4.json)"
    )
    add_quiet_flag(p)
    add_encoder_flags(p)
    p.set_defaults(func=run_generate, identities=None)
    return p


def run_generate(args: argparse.Namespace) -> int:
    """The `generate` command: photos routed first, then the model loaded, sampled and the mp4 written."""
    from harmoview.photo_refs import load_face_stack, route_identities
    from harmoview.pipeline import sidecar_path

    if args.out.suffix.lower() != ".mp4":
        raise ValueError(f"--out {args.out} must end in .mp4")
    for flag, path in (("--ckpt", args.ckpt), ("--low-noise-ckpt", args.low_noise_ckpt)):
        if path is not None and not path.exists():
            raise FileNotFoundError(f"{flag} {path} does not exist")
    groups = [g for g in (args.identities or []) if g]
    routed, stack_name = [], None
    if groups:  # photos before the model: a bad photo fails in seconds, not after loading 14B weights
        stack = load_face_stack(args.models_dir)
        stack_name = stack.name
        routed = route_identities(groups, stack=stack, face=args.face)
    pipe = HarmoViewPipeline.from_pretrained(
        args.ckpt, encoder_paths(args), device=args.device, text_len=args.text_len,
        vit_layers=tuple(args.vit_layers), low_noise_ckpt=args.low_noise_ckpt,
    )  # fmt: skip
    frames = pipe(
        args.prompt, [{slot: r.image for slot, r in views.items()} for views in routed], num_frames=args.frames,
        height=args.height, width=args.width, steps=args.steps, sampler=args.sampler, shift=args.shift,
        ref_scale=args.ref_scale, text_scale=args.text_scale, negative_prompt=args.negative_prompt,
        seed=args.seed, progress=not args.quiet,
    )  # fmt: skip
    references = [{slot: r.describe() for slot, r in views.items()} for views in routed]
    path = pipe.save(frames, args.out, fps=args.fps, sidecar={"references": references, "face_stack": stack_name})
    print(f"wrote {path} and {sidecar_path(path).name}")
    return 0
