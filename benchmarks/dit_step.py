"""Forward+backward time and peak memory of one DiT training step: our backbone vs diffusers' Wan.

    python benchmarks/dit_step.py [--configs small medium] [--rounds 10] [--threads 2]

Timing: all implementations (same weights, same seeded inputs) in one process, interleaved step by
step; the minimum over rounds of process CPU time and of wall time is reported. Peak memory: one
fresh subprocess per implementation, the growth of the resident set during one step (Linux
/proc/self/status VmHWM, reset through /proc/self/clear_refs after a warm-up step, with glibc's mmap
threshold fixed so that freed tensors leave the resident set), i.e. activations + gradients + workspace.

Rows: `diffusers` (WanTransformer3DModel), `ours` (HarmoViewDiT, features off), `harmoview` (2
identities x 3 of 5 views present, proxies in the other 2 slots, sinks, Jump-RoPE, MFI with 2 ViT
depths) and `harmoview+iso` (the same plus the identity-isolation attention mask).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchConfig:
    """Model sizes and input shapes of one benchmark case."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    text_dim: int
    text_tokens: int
    video: tuple[int, int, int, int, int]  # (B, C, F, H, W) latents
    ref_latent_hw: tuple[int, int]
    vit_tokens: int
    vit_dim: int


CONFIGS = {
    # 320 video tokens + 2 x 5 x 4 reference tokens + 4 sinks
    "small": BenchConfig(
        dim=256, ffn_dim=1024, num_heads=4, num_layers=4, text_dim=256, text_tokens=64,
        video=(1, 16, 5, 16, 16), ref_latent_hw=(4, 4), vit_tokens=65, vit_dim=256,
    ),
    # 1280 video tokens (head dim 128 as in Wan) + 2 x 5 x 16 reference tokens + 4 sinks; text padded
    # to 512 tokens of width 4096 as umT5 gives them; ViT-H/14-like features (257 tokens x 1280).
    "medium": BenchConfig(
        dim=384, ffn_dim=1536, num_heads=3, num_layers=4, text_dim=4096, text_tokens=512,
        video=(1, 16, 5, 32, 32), ref_latent_hw=(8, 8), vit_tokens=257, vit_dim=1280,
    ),
    # Wan-like proportions: 4608 video tokens, references +7.9% (Wan2.1-1.3B at 81x480x832 with 2 x 5
    # views of 256 tokens: +7.8%); narrow and shallow so that the quadratic attention stays affordable.
    "long": BenchConfig(
        dim=256, ffn_dim=1024, num_heads=2, num_layers=2, text_dim=4096, text_tokens=512,
        video=(1, 16, 8, 48, 48), ref_latent_hw=(12, 12), vit_tokens=257, vit_dim=1280,
    ),
}  # fmt: skip
IMPLS = ("diffusers", "ours", "harmoview", "harmoview+iso")


def _dit_config(bench: BenchConfig, impl: str):
    from harmoview import DiTConfig

    return DiTConfig(
        dim=bench.dim, ffn_dim=bench.ffn_dim, num_heads=bench.num_heads, num_layers=bench.num_layers,
        in_channels=bench.video[1], out_channels=bench.video[1], text_dim=bench.text_dim,
        ref_latent_hw=bench.ref_latent_hw, vit_dim=bench.vit_dim, vit_num_levels=2,
        use_references=impl.startswith("harmoview"), use_mfi=impl.startswith("harmoview"),
        isolate_identities=impl == "harmoview+iso",
    )  # fmt: skip


def _rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _build(bench: BenchConfig, impl: str):
    """Model and a closure running one forward+backward, all seeded."""
    import torch

    from harmoview import HarmoViewDiT, References
    from harmoview.model.weights import diffusers_config, to_layout

    torch.manual_seed(0)
    model = HarmoViewDiT(_dit_config(bench, impl))
    b, c = bench.video[:2]
    video = torch.randn(*bench.video)
    t = torch.full((b,), 700.0)
    text = torch.randn(b, bench.text_tokens, bench.text_dim)
    extra: tuple = ()
    if impl.startswith("harmoview"):
        present = torch.tensor([[True, True, True, False, False], [True, False, False, True, True]])
        latents = torch.randn(b, 2, 5, c, *bench.ref_latent_hw)
        refs = References(latents=latents, present=present.expand(b, 2, 5))
        extra = (refs, torch.randn(b, 2, bench.vit_tokens, bench.vit_dim * 2))
    if impl == "diffusers":
        from diffusers import WanTransformer3DModel

        kwargs = {k: v for k, v in diffusers_config(model.config).items() if not k.startswith("_")}
        theirs = WanTransformer3DModel(**kwargs)
        theirs.load_state_dict(to_layout(model, "diffusers"), strict=True)
        del model
        return theirs, lambda: theirs(video, t, text).sample
    return model, lambda: model(video, t, text, *extra)


def _step(run, params) -> None:
    out = run()
    out.float().pow(2).mean().backward()
    for p in params:
        p.grad = None


def memory_worker(config_name: str, impl: str, threads: int) -> dict:
    """Peak RSS growth of one forward+backward (run in a fresh process)."""
    import gc

    import torch

    torch.set_num_threads(threads)
    model, run = _build(CONFIGS[config_name], impl)
    params = [p for p in model.parameters() if p.requires_grad]
    _step(run, params)  # warm-up: first-call allocations and kernel selection
    gc.collect()
    rss_before = _status_kib("VmRSS")
    can_reset = _rss_reset()
    _step(run, params)
    peak = _status_kib("VmHWM") - rss_before if can_reset else None
    return {"peak_mib": None if peak is None else peak / 1024, "params": sum(p.numel() for p in params)}


def time_side_by_side(config_name: str, rounds: int, threads: int) -> dict[str, dict]:
    """All implementations in one process, interleaved step by step so that they share the same noise.

    Reports the minimum over rounds of wall time and of process CPU time. On a shared 2-core machine
    wall medians swing by several x with other people's load; CPU time and minima do not.
    """
    import torch

    torch.set_num_threads(threads)
    built = {impl: _build(CONFIGS[config_name], impl) for impl in IMPLS}
    params = {impl: [p for p in m.parameters() if p.requires_grad] for impl, (m, _) in built.items()}
    wall: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    cpu: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for impl in IMPLS:
        _step(built[impl][1], params[impl])
    for _ in range(rounds):
        for impl in IMPLS:
            w0, c0 = time.perf_counter(), time.process_time()
            _step(built[impl][1], params[impl])
            wall[impl].append(time.perf_counter() - w0)
            cpu[impl].append(time.process_time() - c0)
    return {
        impl: {
            "wall_min_s": min(wall[impl]),
            "wall_median_s": statistics.median(wall[impl]),
            "cpu_min_s": min(cpu[impl]),
        }
        for impl in IMPLS
    }


def _run_memory_worker(config_name: str, impl: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--memory-worker", config_name, impl, f"--threads={threads}"]
    # A fixed mmap threshold makes glibc return every freed tensor to the OS at once, so the resident
    # set follows live memory; with its default adaptive threshold freed blocks linger in the heap and
    # the measured growth depends on what the process allocated before.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def _tokens(bench: BenchConfig) -> tuple[int, int]:
    _, _, f, h, w = bench.video
    refs = 2 * 5 * (bench.ref_latent_hw[0] // 2) * (bench.ref_latent_hw[1] // 2) + 4
    return f * (h // 2) * (w // 2), refs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=6, help="timed steps per implementation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--memory-worker", nargs=2, metavar=("CONFIG", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(*args.memory_worker, args.threads)))
        return

    header = "| config | tokens video + ref | impl | params | CPU s (min) | wall s (min / median) | peak MiB"
    print(header + " | CPU vs diffusers | CPU vs ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        video_tokens, ref_tokens = _tokens(CONFIGS[name])
        times = time_side_by_side(name, args.rounds, args.threads)
        for impl in IMPLS:
            mem, t = _run_memory_worker(name, impl, args.threads), times[impl]
            tokens = f"{video_tokens} + {ref_tokens if impl.startswith('harmoview') else 0}"
            peak = "n/a" if mem["peak_mib"] is None else f"{mem['peak_mib']:.0f}"
            vs_diffusers = t["cpu_min_s"] / times["diffusers"]["cpu_min_s"]
            vs_ours = t["cpu_min_s"] / times["ours"]["cpu_min_s"]
            print(
                f"| {name} | {tokens} | {impl} | {mem['params']:,} | {t['cpu_min_s']:.3f} | "
                f"{t['wall_min_s']:.3f} / {t['wall_median_s']:.3f} | {peak} | {vs_diffusers:.2f}x | {vs_ours:.2f}x |"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
