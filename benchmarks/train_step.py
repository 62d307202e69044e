"""Is the data loader ever the bottleneck of `harmoview train`? And the DiT step alone: time, MFU, memory.

Pipeline mode, on a datakit run (e.g. one made by `datakit build --src ../shared/media/videos
--out /tmp/run_shipped --models-dir ../shared/models`; run from the repository root when its run.json
records a relative --src):

    python -m benchmarks.train_step --manifests /tmp/run_shipped [--buckets tiny | --frames 17 --size 128x224]

On one machine and config, each after --warmup batches or steps: (a) loader samples/s, iterating
`DataLoader(TrainDataset(index), batch_size=None, num_workers=W)` alone for each W in --workers;
(b) the same from a `harmoview cache` (built first; its encode rate is printed); (c) samples/s of the
real `Trainer` with and without that cache (num_workers = the largest W), and where a step's time went:
waiting for a batch, encoding (VAE, umT5, ViT), the rest (DiT forward/backward, AdamW, EMA, logging).
ratio = loader / step samples/s: above 1 the loader outruns training. Encoders: --encoders DIR (a
diffusers Wan folder plus vit/), else tiny random ones (harmoview.tiny) in a temporary folder.

Synthetic mode, the DiT training step alone on random inputs (no data, no encoders):

    python -m benchmarks.train_step --synthetic --preset wan2.1-t2v-1.3b --device cuda [--fsdp]
    torchrun --nproc_per_node 8 -m benchmarks.train_step --synthetic --preset wan2.1-t2v-1.3b --device cuda --fsdp

Latents 21x60x104 (480p x 81 frames), 1 identity x 5 view slots, MFI on, full model trained, forward +
backward + AdamW in bf16 autocast, without and with activation checkpointing: step time, video
tokens/s, MFU and peak memory (torch.cuda.max_memory_allocated). FLOPs per step = 3 x forward, with
forward = layers x [2L(6D^2 + 2DF) + 4D^2(Lt + Li) + 4LD(L + Lt + Li)] (multiply-add = 2; L video +
reference tokens, Lt text, Li MFI tokens, D width, F FFN width; embeddings, MFI projector and head
left out, < 1%); recomputation is not counted. MFU = FLOPs / step time / --peak-tflops per GPU
(default 989: H100/H200 bf16 dense). `--device cpu --preset tiny` runs the same path on a CPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from harmoview.cache import CachedDataset, build_cache, find_cache
from harmoview.config import VIEW_SLOTS, get_config
from harmoview.data import SampleIndex, TrainDataset
from harmoview.encoders import EncoderPaths, Encoders
from harmoview.flow import flow_loss
from harmoview.optim import build_optimizer
from harmoview.parallel import apply_activation_checkpointing, apply_fsdp
from harmoview.recipes import BUCKETS, RECIPES, apply_overrides, get_recipe
from harmoview.references import References
from harmoview.train import Trainer, TrainRun
from harmoview.weights import build_model


def train_config(args: argparse.Namespace, steps: int = 1, workers: int = 0):
    """The recipe at the benchmark's buckets; one fresh config per use (the Trainer sets its ref_size)."""
    data = {"batch_size": args.batch_size}
    if args.frames:  # one custom bucket instead of the preset's
        data |= {"frame_counts": [args.frames], "resolutions": [args.size]}
    over = {"buckets": args.buckets, "data": data, "steps": steps, "num_workers": workers, "checkpoint_every": 10**9}
    return apply_overrides(get_recipe(args.recipe), over)


def loader_rate(dataset: TrainDataset, workers: int, warmup: int, batches: int) -> float:
    """Samples/s of the loader alone over `batches` batches, after `warmup` (worker start-up included there)."""
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start, num_samples = time.perf_counter(), 0
    for _ in range(batches):
        num_samples += len(next(it)["sample_ids"])
    return num_samples / (time.perf_counter() - start)


class TimedTrainer(Trainer):
    """The real Trainer, with clocks at the start of each step, around each batch wait and each encode."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.starts, self.samples, self.wait_s, self.encode_s = [], [], [], []

    def _accumulate(self, batches) -> tuple[float, int]:
        self.starts.append(time.perf_counter())
        self.wait_s.append(0.0)
        self.encode_s.append(0.0)
        loss, num_samples = super()._accumulate(batches)
        self.samples.append(num_samples)
        return loss, num_samples

    def _next_batch(self, batches) -> dict:
        start = time.perf_counter()
        batch = super()._next_batch(batches)
        self.wait_s[-1] += time.perf_counter() - start
        return batch

    def _encode(self, batch, refs_on, mfi_on):
        start = time.perf_counter()
        enc = super()._encode(batch, refs_on, mfi_on)
        self.encode_s[-1] += time.perf_counter() - start
        return enc


def train_rate(args, run: TrainRun, workers: int) -> dict:
    """Samples/s and time shares of steps warmup..warmup+steps-1 (the last step, with its checkpoint, is not timed)."""
    trainer = TimedTrainer(train_config(args, args.warmup + args.steps + 1, workers), run)
    trainer.run()
    w, last = args.warmup, args.warmup + args.steps
    elapsed = trainer.starts[last] - trainer.starts[w]
    return {
        "rate": sum(trainer.samples[w:last]) / elapsed,
        "wait": sum(trainer.wait_s[w:last]) / elapsed,
        "encode": sum(trainer.encode_s[w:last]) / elapsed,
    }


def pipeline(args: argparse.Namespace, tmp: Path) -> None:
    paths = EncoderPaths.from_wan_dir(args.encoders, vit=args.encoders / "vit") if args.encoders else None
    if paths is None:
        from harmoview.tiny import write_tiny_encoders

        paths = write_tiny_encoders(tmp / "encoders")
    # The Trainer's encoders exactly (dtype included: it is part of the cache key).
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoders = Encoders.load(paths, device=device, dtype=dtype, text_len=args.text_len, vit_layers=args.vit_layers)
    config = train_config(args)
    ref_hw = get_config(args.preset).ref_latent_hw
    config.data.ref_size = (ref_hw[0] * encoders.spatial_stride, ref_hw[1] * encoders.spatial_stride)
    index = SampleIndex.open(args.manifests, config.data)
    buckets = index.summary()["buckets"]
    start = time.perf_counter()
    built = build_cache(args.manifests, tmp / "cache", encoders, config.data, progress=False)
    encode_rate = built.written / (time.perf_counter() - start)
    folder, message = find_cache(tmp / "cache", encoders, config.data, index)
    assert folder is not None, message
    del encoders
    print(
        f"{len(index)} usable samples, buckets {buckets}, recipe {args.recipe}, preset {args.preset}, "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, device {device}"
    )
    print(f"cache build (all views, <= 3 identities, one process): {encode_rate:.2f} samples/s\n")
    datasets = {"on the fly": TrainDataset(index), "cache": CachedDataset(index, folder)}
    loader = {(m, w): loader_rate(ds, w, args.warmup, args.steps) for m, ds in datasets.items() for w in args.workers}
    workers = max(args.workers)
    runs = {m: TrainRun(manifests=args.manifests, out=tmp / f"train-{i}", encoders=paths, preset=args.preset,
                        cache=tmp / "cache" if m == "cache" else None, text_len=args.text_len,
                        vit_layers=tuple(args.vit_layers), progress=False) for i, m in enumerate(datasets)}  # fmt: skip
    steps = {m: train_rate(args, run, workers) for m, run in runs.items()}
    cols = " | ".join(f"loader W={w}" for w in args.workers)
    print(
        f"| encodings | {cols} | train step (W={workers}) | ratio loader/step (W={workers}) | "
        "step time waiting for data | step time encoding |"
    )
    print("|---|" + "---|" * (len(args.workers) + 4))
    for m, s in steps.items():
        rates = " | ".join(f"{loader[m, w]:.2f}" for w in args.workers)
        print(
            f"| {m} | {rates} | {s['rate']:.2f} | {loader[m, workers] / s['rate']:.1f}x | "
            f"{100 * s['wait']:.0f}% | {100 * s['encode']:.0f}% |"
        )
    saved = 1 - steps["on the fly"]["rate"] / steps["cache"]["rate"]
    print(f"\nsamples/s; encode share of an on-the-fly step from the two rates (1 - fly/cache): {100 * saved:.0f}%")


def forward_flops(config, video_tokens: int, ref_tokens: int, text_tokens: int, image_tokens: int) -> float:
    """Forward FLOPs of the blocks for one sample (the formula of the module docstring)."""
    D, F, L, Lt, Li = config.dim, config.ffn_dim, video_tokens + ref_tokens, text_tokens, image_tokens
    per_block = 2 * L * (6 * D * D + 2 * D * F) + 4 * D * D * (Lt + Li) + 4 * L * D * (L + Lt + Li)
    return config.num_layers * per_block


def synthetic(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if args.fsdp and not torch.distributed.is_initialized():  # 1 process without torchrun: a group of one
        for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533"), ("RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(key, value)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
    config = get_config(args.preset)
    latent = args.latent or ((21, 60, 104) if device.type == "cuda" else (5, 16, 16))  # 480p x 81; a CPU smoke size
    b, n, (f, h, w) = args.batch_size, args.identities, latent
    g = torch.Generator(device).manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g, device=device)  # noqa: E731
    video, text = rand(b, config.in_channels, f, h, w), rand(b, args.text_len, config.text_dim)
    t = torch.full((b,), 700.0, device=device)
    refs = References(rand(b, n, len(VIEW_SLOTS), config.in_channels, *config.ref_latent_hw),
                      torch.ones(b, n, len(VIEW_SLOTS), dtype=torch.bool, device=device)) if n else None  # fmt: skip
    vit = rand(b, n, args.vit_tokens, config.vit_dim * config.vit_num_levels) if n and config.use_mfi else None
    pt, ph, pw = config.patch_size
    video_tokens = (f // pt) * (h // ph) * (w // pw)
    ref_tokens = n * len(VIEW_SLOTS) * config.tokens_per_view + (config.num_sink_tokens if n else 0)
    image_tokens = 1 + n * args.vit_tokens if vit is not None else 0
    flops = 3 * b * forward_flops(config, video_tokens, ref_tokens, args.text_len, image_tokens)
    bf16 = args.dtype == "bf16"
    print(
        f"preset {args.preset}, latents {b}x{config.in_channels}x{f}x{h}x{w}: {video_tokens} video + {ref_tokens} "
        f"reference tokens, {args.text_len} text, {image_tokens} MFI; {args.dtype}, fsdp {args.fsdp}, {device}; "
        f"{flops / 1e12:.2f} TFLOP per step and {'GPU' if device.type == 'cuda' else 'process'}"
    )
    print("\n| activation checkpointing | step s (median) | video tokens/s | MFU | peak memory GiB |")
    print("|---|---|---|---|---|")
    for checkpointing in (False, True):
        model, _ = build_model(config, device=device)
        if checkpointing:
            apply_activation_checkpointing(model)
        if args.fsdp:
            apply_fsdp(model, bf16=bf16, device=device)
        optimizer = build_optimizer(model, 1e-5, 0.0, (0.9, 0.999))
        target = rand(*video.shape)
        times = []
        try:
            for i in range(args.warmup + args.steps):
                if i == args.warmup and device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    prediction = model(video, t, text, refs, vit)  # (B, C, f, h, w)
                flow_loss(prediction, target).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        except torch.OutOfMemoryError:
            print(f"| {'on' if checkpointing else 'off'} | out of memory | | | |")
        else:
            step_s = sorted(times[args.warmup :])[len(times[args.warmup :]) // 2]
            mfu = flops / step_s / (args.peak_tflops * 1e12)
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device.type == "cuda" else "n/a (CPU)"
            print(
                f"| {'on' if checkpointing else 'off'} | {step_s:.3f} | {b * video_tokens / step_s:,.0f} | "
                f"{100 * mfu:.1f}% | {peak} |"
            )
        del model, optimizer
        if device.type == "cuda":
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
    p.add_argument("--warmup", type=int, default=3, help="untimed batches / steps first")
    p.add_argument("--encoders", type=Path, help="diffusers Wan folder (vae/, text_encoder/, tokenizer/) + vit/")
    p.add_argument("--vit-layers", type=int, nargs="+", default=[0, 1], help="ViT depths (tiny ViT: 0 1)")
    p.add_argument("--text-len", type=int, default=512, help="text tokens (Wan: 512)")
    p.add_argument("--preset", default="tiny", help="DiT preset, random weights")
    p.add_argument("--threads", type=int, help="torch threads of the main process (default: torch's)")
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
