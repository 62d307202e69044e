"""Is the data loader ever the bottleneck of `harmoview train`? And the DiT step alone: time, MFU, memory.

Pipeline mode, on a datakit run (e.g. `datakit build --src ../shared/media/videos --out /tmp/run_shipped
--models-dir ../shared/models`; run from the repository root if its run.json records a relative --src):

    python -m benchmarks.train_step --manifests /tmp/run_shipped [--buckets tiny | --frames 17 --size 128x224]

Same machine and config, after --warmup batches or steps, for each W in --workers and with/without a
`harmoview cache` (built first; its encode rate is printed): loader samples/s of
`DataLoader(TrainDataset(index), batch_size=None, num_workers=W)` alone (or `CachedDataset`), and
samples/s of the real `Trainer` (its own per-step metrics: step time, batch wait, encode time).
ratio = loader / training: above 1 the loader outruns training. Encoders: --encoders DIR (a diffusers
Wan folder plus vit/), else tiny random ones (harmoview.testing). Each row is the best of --repeats.

Synthetic mode, the DiT training step alone on random inputs (no data, no encoders):

    python -m benchmarks.train_step --synthetic --preset wan2.1-t2v-1.3b --device cuda [--fsdp]
    torchrun --nproc_per_node 8 -m benchmarks.train_step --synthetic --preset wan2.1-t2v-1.3b --fsdp

Latents 21x60x104 (480p x 81 frames; 5x16x16 on CPU), 1 identity x 5 view slots, MFI on, every weight
trained; forward + backward + AdamW under bf16 autocast, without and with activation checkpointing:
median step time, video tokens/s, MFU, peak torch.cuda.max_memory_allocated. FLOPs per step = 3 x
forward, forward = layers x [2L(6D^2 + 2DF) + 4D^2(Lt + Li) + 4LD(L + Lt + Li)] (multiply-add = 2;
L = video + reference tokens, Lt text, Li MFI tokens, D width, F FFN width; embeddings, MFI projector
and head left out: within 1% of torch's FlopCounterMode at Wan sizes); recomputation is not counted.
MFU = FLOPs / step time / --peak-tflops per GPU (989: H100/H200 bf16 dense). `--device cpu --preset
tiny` runs the same path on a CPU (a smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks import median_seconds
from harmoview.data.dataset import SampleIndex, TrainDataset
from harmoview.flow import flow_loss
from harmoview.model.config import VIEW_SLOTS, get_config
from harmoview.model.encoders import EncoderPaths, Encoders, training_dtypes
from harmoview.model.references import References
from harmoview.model.weights import build_model
from harmoview.train.cache import CachedDataset, build_cache, find_cache
from harmoview.train.log import MetricsLog
from harmoview.train.optim import build_optimizer
from harmoview.train.parallel import apply_activation_checkpointing, apply_fsdp, resolve_bf16
from harmoview.train.recipes import BUCKETS, RECIPES, apply_overrides, get_recipe
from harmoview.train.trainer import TrainRun, train


def train_config(args: argparse.Namespace, steps: int = 1, workers: int = 0):
    """The recipe at the benchmark's buckets; a fresh config per use (the Trainer sets its ref_size)."""
    data = {"batch_size": args.batch_size}
    if args.frames:  # one custom bucket instead of the preset's
        data |= {"frame_counts": [args.frames], "resolutions": [args.size]}
    over = {"buckets": args.buckets, "data": data, "steps": steps, "num_workers": workers, "checkpoint_every": 10**9}
    return apply_overrides(get_recipe(args.recipe), over)


def loader_rate(dataset: TrainDataset, workers: int, warmup: int, batches: int) -> dict:
    """Samples/s of the loader alone over `batches` batches after `warmup` (worker start-up falls there)."""
    it = iter(DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None))
    for _ in range(warmup):
        next(it)
    start, num_samples = time.perf_counter(), 0
    for _ in range(batches):
        num_samples += len(next(it)["sample_ids"])
    return {"samples": num_samples / (time.perf_counter() - start)}


def train_rate(args: argparse.Namespace, run: TrainRun, workers: int) -> dict:
    """Samples/s and time shares over steps warmup+1 .. warmup+steps, from the trainer's own per-step metrics
    (`step_s`, `data_wait_s`, `encode_s`); the last step, which saves a checkpoint, is not in the window."""
    run = dataclasses.replace(run, out=Path(tempfile.mkdtemp(dir=run.out)))  # a fresh run, not a resume
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer says which cache it reads
        train(train_config(args, args.warmup + args.steps + 1, workers), run)
    window = MetricsLog(run.out, enabled=True).read()[args.warmup : args.warmup + args.steps]
    elapsed = sum(r["step_s"] for r in window)
    return {
        "samples": sum(r["samples"] for r in window) / elapsed,
        "wait": sum(r["data_wait_s"] for r in window) / elapsed,
        "encode": sum(r["encode_s"] for r in window) / elapsed,
    }


def best_of(repeats: int, measure) -> dict:
    """The fastest of `repeats` measurements: on a shared machine the slower ones met other work."""
    return max((measure() for _ in range(repeats)), key=lambda r: r["samples"])


def pipeline(args: argparse.Namespace, tmp: Path) -> None:
    if args.encoders:
        vit = args.encoders / "vit"
        paths = EncoderPaths.from_wan_dir(args.encoders, vit=vit if vit.is_dir() else None)
    else:
        from harmoview.testing import write_tiny_encoders

        paths = write_tiny_encoders(tmp / "encoders")
    # The Trainer's device and encoder dtypes: they are part of the cache key.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoders = Encoders.load(paths, device=device, text_len=args.text_len, vit_layers=args.vit_layers,
                             **training_dtypes(resolve_bf16("auto", torch.device(device))))  # fmt: skip
    config = train_config(args)
    ref_hw = get_config(args.preset).ref_latent_hw
    config.data.ref_size = (ref_hw[0] * encoders.spatial_stride, ref_hw[1] * encoders.spatial_stride)
    index = SampleIndex.open(args.manifests, config.data)
    if args.loader_only:  # e.g. real buckets, whose encoding a CPU cannot afford
        for workers in args.workers:
            rate = best_of(args.repeats, partial(loader_rate, TrainDataset(index), workers, args.warmup, args.steps))
            print(f"{index.summary()['buckets']}: loader alone, {workers} workers: {rate['samples']:.2f} samples/s")
        return
    start = time.perf_counter()
    built = build_cache(args.manifests, tmp / "cache", encoders, config.data, progress=False)
    encode_rate = built.written / (time.perf_counter() - start)
    folder, message = find_cache(tmp / "cache", encoders, config.data, index)
    assert folder is not None, message
    print(
        f"{len(index)} usable samples, buckets {index.summary()['buckets']}, recipe {args.recipe}, preset "
        f"{args.preset}, batch {args.batch_size}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
        f"{device}\ncache build (all views and identities, one process): {encode_rate:.2f} samples/s\n"
    )
    print(
        "| encodings | workers | loader alone | training | ratio loader/training | step waits for data | "
        "step encodes |\n|---|---|---|---|---|---|---|"
    )
    steps = {}
    datasets = {"on the fly": TrainDataset(index), "cache": CachedDataset(index, folder)}
    for mode, dataset in datasets.items():
        run = TrainRun(manifests=args.manifests, out=tmp, encoders=paths, preset=args.preset, text_len=args.text_len,
                       cache=tmp / "cache" if mode == "cache" else None, vit_layers=tuple(args.vit_layers),
                       progress=False)  # fmt: skip
        for workers in args.workers:
            loader = best_of(args.repeats, partial(loader_rate, dataset, workers, args.warmup, args.steps))["samples"]
            s = steps[mode, workers] = best_of(args.repeats, partial(train_rate, args, run, workers))
            print(
                f"| {mode} | {workers} | {loader:.2f} | {s['samples']:.2f} | {loader / s['samples']:.1f}x | "
                f"{100 * s['wait']:.0f}% | {100 * s['encode']:.0f}% |",
                flush=True,
            )
    speedup = ", ".join(
        f"{steps['cache', w]['samples'] / steps['on the fly', w]['samples']:.1f}x at {w} workers" for w in args.workers
    )
    print(f"\nsamples/s, best of {args.repeats}; training from the cache vs on the fly: {speedup}")


def forward_flops(config, video_tokens: int, ref_tokens: int, text_tokens: int, image_tokens: int) -> int:
    """Forward FLOPs of the blocks for one sample (the formula of the module docstring)."""
    D, F, L, Lt, Li = config.dim, config.ffn_dim, video_tokens + ref_tokens, text_tokens, image_tokens
    return config.num_layers * (2 * L * (6 * D * D + 2 * D * F) + 4 * D * D * (Lt + Li) + 4 * L * D * (L + Lt + Li))


def _synthetic_device(args: argparse.Namespace) -> torch.device:
    """The device of this process; with --fsdp outside torchrun, a process group of one."""
    device = torch.device(args.device)
    if args.fsdp and not torch.distributed.is_initialized():  # without torchrun: a group of one process
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "WORLD_SIZE": "1"}.items():
            os.environ.setdefault(key, value)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _random_inputs(config, args: argparse.Namespace, device: torch.device, latent: tuple[int, int, int]):
    """(model inputs, velocity target) of random data: B samples, N identities with every view slot."""
    b, n = args.batch_size, args.identities
    g = torch.Generator(device).manual_seed(0)
    rand = partial(torch.randn, generator=g, device=device)
    video, target = rand(b, config.in_channels, *latent), rand(b, config.in_channels, *latent)  # (B, C, f, h, w)
    text = rand(b, args.text_len, config.text_dim)  # (B, Lt, Dt)
    present = torch.ones(b, n, len(VIEW_SLOTS), dtype=torch.bool, device=device)  # (B, N, S)
    refs = References(rand(b, n, len(VIEW_SLOTS), config.in_channels, *config.ref_latent_hw), present) if n else None
    vit = rand(b, n, args.vit_tokens, config.vit_dim * config.vit_num_levels) if n and config.use_mfi else None
    t = torch.full((b,), 700.0, device=device)  # (B,)
    return (video, t, text, refs, vit), target


def _median_step_s(model, inputs: tuple, target: torch.Tensor, args: argparse.Namespace) -> float:
    """Median time of forward + backward + AdamW after --warmup steps; peak memory counts the timed steps."""
    bf16 = args.dtype == "bf16"
    optimizer = build_optimizer(model, 1e-5, 0.0, (0.9, 0.999))

    def step() -> None:
        with torch.autocast(inputs[0].device.type, dtype=torch.bfloat16, enabled=bf16):
            prediction = model(*inputs)  # (B, C, f, h, w)
        flow_loss(prediction, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_seconds(step, cuda=inputs[0].device.type == "cuda", warmup=args.warmup, steps=args.steps)


def synthetic(args: argparse.Namespace) -> None:
    """The DiT training step alone on random inputs, without and with activation checkpointing."""
    device, main_rank = _synthetic_device(args), os.environ.get("RANK", "0") == "0"
    cuda = device.type == "cuda"
    config, b, n = get_config(args.preset), args.batch_size, args.identities
    f, h, w = args.latent or ((21, 60, 104) if cuda else (5, 16, 16))
    inputs, target = _random_inputs(config, args, device, (f, h, w))
    video_tokens = (f // config.patch_size[0]) * (h // config.patch_size[1]) * (w // config.patch_size[2])
    ref_tokens = n * len(VIEW_SLOTS) * config.tokens_per_view + (config.num_sink_tokens if n else 0)
    image_tokens = 1 + n * args.vit_tokens if inputs[4] is not None else 0
    flops = 3 * b * forward_flops(config, video_tokens, ref_tokens, args.text_len, image_tokens)
    if main_rank:
        print(
            f"preset {args.preset}, latents {b}x{config.in_channels}x{f}x{h}x{w}: {video_tokens} video + {ref_tokens} "
            f"reference tokens, {args.text_len} text, {image_tokens} MFI; {args.dtype}, FSDP2 {args.fsdp}, {device}; "
            f"{flops / 1e12:.3g} TFLOP per step and {'GPU' if cuda else 'process'}\n\n| activation checkpointing | "
            "step s (median) | video tokens/s | MFU | peak memory GiB |\n|---|---|---|---|---|"
        )
    for checkpointing in (False, True):
        model, _ = build_model(config, device=device)
        if checkpointing:
            apply_activation_checkpointing(model)
        if args.fsdp:
            apply_fsdp(model, bf16=args.dtype == "bf16", device=device)
        row = "on" if checkpointing else "off"
        try:
            step_s = _median_step_s(model, inputs, target, args)
            mfu = f"{100 * flops / step_s / (args.peak_tflops * 1e12):.1f}%" if cuda else "n/a (CPU)"
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if cuda else "n/a (CPU)"
            row += f" | {step_s:.3f} | {b * video_tokens / step_s:,.0f} | {mfu} | {peak} |"
        except torch.OutOfMemoryError:
            row += " | out of memory | | | |"
        if main_rank:
            print(f"| {row}", flush=True)
        del model
        if cuda:
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifests", type=Path, action="append", help="datakit run directory (repeatable)")
    p.add_argument("--recipe", default="pvc-stage1", choices=list(RECIPES))
    p.add_argument("--buckets", default="tiny", choices=list(BUCKETS), help="bucket preset (default tiny: 5x32x32)")
    p.add_argument("--frames", type=int, help="one custom bucket instead of --buckets: frames (4k+1), with --size")
    p.add_argument("--size", type=lambda s: [int(v) for v in s.split("x")], help="its HxW, e.g. 128x224")
    p.add_argument("--batch-size", type=int, default=1, help="samples per batch")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="data-loader workers to measure")
    p.add_argument("--steps", type=int, default=20, help="timed batches / steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches / steps before")
    p.add_argument("--repeats", type=int, default=3, help="loader and training runs per row; the fastest is shown")
    p.add_argument("--encoders", type=Path, help="diffusers Wan folder (vae/, text_encoder/, tokenizer/) [+ vit/]")
    p.add_argument("--vit-layers", type=int, nargs="+", default=[0, 1], help="ViT depths (tiny ViT: 0 1)")
    p.add_argument("--text-len", type=int, default=512, help="text tokens (Wan: 512)")
    p.add_argument("--preset", default="tiny", help="DiT preset, random weights")
    p.add_argument("--loader-only", action="store_true", help="measure the loader alone (no cache, no training)")
    p.add_argument("--threads", type=int, help="main-process torch threads (default torch's; 1: steadier when shared)")
    g = p.add_argument_group("synthetic mode (the DiT step alone)")
    g.add_argument("--synthetic", action="store_true", help="time the DiT step on random latents, no data")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--latent", type=int, nargs=3, metavar=("F", "H", "W"), help="default 21 60 104; 5 16 16 on CPU")
    g.add_argument("--identities", type=int, default=1, help="identities x 5 view slots of references (0 = T2V)")
    g.add_argument("--vit-tokens", type=int, default=257, help="MFI tokens per identity (ViT-H/14 at 224: 257)")
    g.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="autocast dtype")
    g.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (bf16 params, fp32 reduce)")
    g.add_argument("--peak-tflops", type=float, default=989.0, help="per-GPU peak (H100/H200 bf16 dense: 989)")
    args = p.parse_args(argv)
    if bool(args.frames) != bool(args.size):
        p.error("a custom bucket needs both --frames and --size")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.synthetic:
        return synthetic(args)
    if not args.manifests:
        p.error("--manifests RUN is required (a `datakit build` output), or --synthetic")
    with tempfile.TemporaryDirectory() as tmp:
        pipeline(args, Path(tmp))


if __name__ == "__main__":
    main()
