"""One sampling step of the DiT: ours vs diffusers' ``WanTransformer3DModel``, references off and on.

    python -m benchmarks.sample_step --preset wan2.1-t2v-1.3b --device cuda        # 480p x 81 frames
    python -m benchmarks.sample_step --preset tiny --device cpu --latent 2 8 8     # a smoke run

Both models hold the same random weights (ours converted to the diffusers layout, as `harmoview` exports
them), in eval mode under ``torch.no_grad`` and bf16 autocast (``--dtype fp32``: none), on the same seeded
inputs: latents (default 21x60x104 on a GPU = 480p x 81 frames, 5x16x16 on CPU), ``--text-len`` umT5
tokens. Rows: ``diffusers`` (the Wan transformer as diffusers' ``WanPipeline`` calls it, once per step and
guidance branch), ``ours, no references, bf16 stream`` (the same computation in our code, residual stream in
the compute dtype as diffusers keeps it: ``DiTConfig(fp32_residual=False)``; its output is compared with
diffusers'), ``ours, no references, fp32 stream`` (our default, Wan's reference code: the hidden state between
blocks in float32; in bf16 it differs from diffusers by bf16 rounding, in fp32 not at all), ``ours,
references`` (``--identities`` x 5 view slots + MFI tokens, the HarmoView step, fp32 stream).
Columns: median forward time after ``--warmup`` forwards, video tokens/s, peak memory (GPU), and the
largest difference to diffusers' output relative to its largest value. No timing asserts: it prints one
table (``benchmarks/gpu_check.sh`` runs it with the training step on one GPU).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import median_seconds
from benchmarks.train_step import _random_inputs
from harmoview.model.config import VIEW_SLOTS, get_config
from harmoview.model.weights import build_model, diffusers_config, to_layout


def _median_forward_s(run, device: torch.device, args: argparse.Namespace) -> tuple[float, torch.Tensor]:
    """Median seconds of ``run()`` after --warmup calls, and its last output."""
    outputs = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        step_s = median_seconds(
            lambda: outputs.append(run()),
            cuda=device.type == "cuda",
            warmup=args.warmup,
            steps=args.steps,
        )
    return step_s, outputs[-1].float()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="wan2.1-t2v-1.3b", help="model preset (harmoview.model.config)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--latent", type=int, nargs=3, metavar=("F", "H", "W"), help="latent frames, height, width")
    p.add_argument("--text-len", type=int, default=512, help="text tokens (umT5: 512)")
    p.add_argument("--vit-tokens", type=int, default=257, help="ViT tokens per identity (ViT-H/14 at 224: 257)")
    p.add_argument("--identities", type=int, default=1, help="identities with references in the references row")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed forwards per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards before")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    args = p.parse_args(argv)

    from diffusers import WanTransformer3DModel

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    config = get_config(args.preset)
    f, h, w = args.latent or ((21, 60, 104) if cuda else (5, 16, 16))
    torch.manual_seed(0)
    ours, _ = build_model(config, device=device)
    ours.initialize_weights(["head.head.weight"], zero_head=False)  # a random head: outputs worth comparing
    ours.eval()
    theirs = WanTransformer3DModel(**{k: v for k, v in diffusers_config(config).items() if not k.startswith("_")})
    wanted = theirs.state_dict().keys()  # the Wan backbone: our HarmoView modules have no diffusers counterpart
    theirs.load_state_dict({k: v for k, v in to_layout(ours, "diffusers").items() if k in wanted}, strict=True)
    theirs.to(device).eval()
    (video, t, text, refs, vit), _ = _random_inputs(config, args, device, (f, h, w))
    video_tokens = (f // config.patch_size[0]) * (h // config.patch_size[1]) * (w // config.patch_size[2])
    ref_tokens = args.identities * len(VIEW_SLOTS) * config.tokens_per_view
    print(
        f"preset {args.preset}, latents {args.batch_size}x{config.in_channels}x{f}x{h}x{w}: {video_tokens} video "
        f"tokens ({ref_tokens} more with references), {args.text_len} text; {args.dtype}, {device}\n\n"
        "| model | forward ms (median) | video tokens/s | peak memory GiB | max diff vs diffusers (relative) |\n"
        "|---|---|---|---|---|"
    )

    def stream(fp32: bool, *inputs) -> torch.Tensor:
        ours.config.fp32_residual = fp32  # a forward-time switch: the same weights either way
        return ours(*inputs)

    rows = [
        ("diffusers WanTransformer3DModel", lambda: theirs(video, t, text).sample),
        ("ours, no references, bf16 stream (as diffusers)", lambda: stream(False, video, t, text)),
        ("ours, no references, fp32 stream (as Wan)", lambda: stream(True, video, t, text)),
        (
            f"ours, references ({args.identities} x {len(VIEW_SLOTS)} views + MFI)",
            lambda: stream(True, video, t, text, refs, vit),
        ),
    ]
    reference = None
    for name, run in rows:
        step_s, out = _median_forward_s(run, device, args)
        reference = out if reference is None else reference
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if cuda else "n/a (CPU)"
        diff = "-" if out is reference else f"{((out - reference).abs().max() / reference.abs().max()).item():.2e}"
        if "references (" in name:
            diff = "n/a (other input)"
        print(f"| {name} | {1000 * step_s:.1f} | {args.batch_size * video_tokens / step_s:,.0f} | {peak} | {diff} |")


if __name__ == "__main__":
    main()
