"""Does conditioning on references help? Held-out flow-matching loss with own, no and another identity's references.

On a datakit run of the shipped footage (built here, or `--run DIR`), the samples are split by clip: every
identity that is the main subject of >= 2 samples gives one clip to the held-out set (the one with the most
reference views cut from *other* clips), the rest train. The real trainer (`harmoview.train.trainer.train`)
then trains a fresh model per seed for `--steps` optimiser steps on the training clips (`--recipe`, default
pvc-stage3: every view, view dropout, sometimes no references), and on the held-out clips the exported
weights are scored by the flow-matching loss at fixed noise and sigma draws (`make_inputs` seeded by
--eval-seed, draw and sample id: the same numbers for every condition, seed and variant) with

    (a) own    the identity's references from other clips (a slot whose crop comes from the target clip is
               removed; the ViT features of MFI follow the frontal slot)
    (b) none   no references (text-to-video; the text is the empty prompt, the shipped run has no captions)
    (c) other  another held-out identity's references (the same masking), with the target of (a)

b/a > 1 (references lower the loss) and c/a > 1 (the *right* identity's references lower it) is the
mechanism working. Ablations (`--variants`) are trained the same way from the same initial weights per seed
with one change: `mfi-off` (use_mfi=False), `lpt-off` (proxy_tokens=False and num_sink_tokens=0: an absent
view slot is the patch embedding of a zero latent, no sinks), `gap0` (jump_rope_gap=0; with one identity per
sample only the sink tokens move) and `frontal-only` (the model unchanged, trained and scored with the frontal
reference slot only: samples without a frontal reference leave training, (a) and (c) keep only the frontal).

Frontal only vs all views on targets whose face is turned: a held-out target counts as turned when the median
|yaw| of its identity's faces in the clip (datakit's faces and tracks tables) is >= 20 deg, where the view bins
leave "frontal". On those targets every variant is also scored with its own references cut to the frontal slot
("frontal", the same weights), and `frontal-only` is compared with `full` (frontal-only / full of (a); > 1: the
other views help). The shipped run has one such held-out target (foreman_cif.mp4, median |yaw| 31 deg, frontal,
left and right references from its other clip), so that comparison rests on one clip x 32 draws per seed.

CPU (tiny random encoders from `harmoview.testing`, tiny buckets 5x32x32; 5 variants x 3 seeds took 14 minutes
on a shared 2-core VM, a run is deterministic: the same rows on every rerun):

    python -m benchmarks.reference_gain --steps 300 --seeds 0 1 2 [--run /tmp/run_shipped] [--out report.md]

A GPU with real weights (the cache and evaluation use the same code; 480p buckets are slow, pick --steps):

    python -m benchmarks.reference_gain --preset wan2.1-t2v-1.3b --init $WAN --wan-dir $WAN --vit $VIT \\
        --vit-layers -2 --text-len 512 --buckets 480p --device cuda --steps 500 --lr 2e-5

Everything lives under --work (default a temporary folder); each variant's initial weights and training
outputs are deleted once scored, so a 1.3B run keeps at most one copy on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import torch

from benchmarks import Tee
from datakit.store import RunDir
from harmoview.data.dataset import SampleIndex, SampleReader, collate
from harmoview.flow import flow_loss
from harmoview.model.config import FRONTAL_SLOT, VIEW_SLOTS
from harmoview.model.dit import HarmoViewDiT
from harmoview.model.encoders import EncoderPaths, Encoders, training_dtypes
from harmoview.model.weights import from_pretrained, save_checkpoint
from harmoview.train.cache import build_cache
from harmoview.train.dropout import ViewDropout
from harmoview.train.inputs import EncodedBatch, encode_batch, make_inputs
from harmoview.train.parallel import resolve_bf16
from harmoview.train.recipes import BUCKETS, RECIPES, TrainConfig, apply_overrides, get_recipe
from harmoview.train.trainable import load_initial_model
from harmoview.train.trainer import TrainRun, train

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ablation: DiTConfig fields changed from the same initial weights, and the reference views it trains
    and is scored with (None = the recipe's: every view)."""

    model: dict = dataclasses.field(default_factory=dict)
    views: tuple[str, ...] | None = None


VARIANTS = {
    "full": Variant(),
    "mfi-off": Variant({"use_mfi": False}),
    "lpt-off": Variant({"proxy_tokens": False, "num_sink_tokens": 0}),  # zero padding, no sinks
    "gap0": Variant({"jump_rope_gap": 0}),
    "frontal-only": Variant(views=(VIEW_SLOTS[FRONTAL_SLOT],)),
}
CONDITIONS = ("own", "none", "other")
TURNED_DEG = 20.0  # |yaw| at which datakit's view bins leave "frontal"
# --preset tiny trains from random weights in minutes: the README demo's learning rate, no warm-up.
TINY_OVERRIDES = {"lr": 3e-3, "warmup_steps": 0}


# --- data: the run, the split by clip ---------------------------------------------------------------


def build_run(out: Path) -> Path:
    """`datakit build` of the shipped footage into `out` (one worker, as the CPU budget allows)."""
    src, models = ROOT.parent / "shared" / "media" / "videos", ROOT.parent / "shared" / "models"
    datakit = Path(sys.executable).parent / "datakit"
    cmd = [str(datakit), "build", "--src", str(src), "--out", str(out), "--models-dir", str(models)]
    subprocess.run([*cmd, "--workers", "1", "--quiet"], check=True, cwd=ROOT)
    return out


def video_root(run: Path) -> Path:
    """The folder the run's videos are in (its recorded --src, relative to the repository root if relative)."""
    src = Path(RunDir.open(run).record()["config"]["src"])
    return src if src.is_absolute() else (ROOT / src).resolve()


def other_clip_slots(run: Path) -> dict[tuple[str, str], torch.Tensor]:
    """(sample_id, identity_id) -> (S,) bool: view slots whose best reference is cut from another clip."""
    rows = ds.dataset(run / "samples", format="parquet").to_table(columns=["sample_id", "identities"]).to_pylist()
    slots = {}
    for row in rows:
        for ident in row["identities"] or []:
            mask, seen = torch.zeros(len(VIEW_SLOTS), dtype=torch.bool), set()
            for ref in ident["references"] or []:
                if ref["view"] not in seen:  # the best-ranked reference of a slot is the one loaded
                    seen.add(ref["view"])
                    mask[VIEW_SLOTS.index(ref["view"])] = not ref["same_clip"]
            slots[row["sample_id"], ident["identity_id"]] = mask
    return slots


def target_yaw(run: Path) -> dict[tuple[str, str], float]:
    """(sample_id, identity_id) -> median |yaw| in degrees of that identity's detected faces in the sample's clip
    (datakit's faces and tracks tables): how far the target's face is turned."""
    tracks = ds.dataset(run / "tracks", format="parquet").to_table(columns=["track_id", "identity_id"]).to_pylist()
    identity = {t["track_id"]: t["identity_id"] for t in tracks}
    faces = ds.dataset(run / "faces", format="parquet").to_table(columns=["clip_id", "track_id", "yaw_deg"])
    yaws = defaultdict(list)
    for face in faces.to_pylist():
        if face["yaw_deg"] is not None and identity.get(face["track_id"]):
            yaws[face["clip_id"], identity[face["track_id"]]].append(abs(face["yaw_deg"]))
    samples = ds.dataset(run / "samples", format="parquet").to_table(columns=["sample_id", "clip_id"]).to_pylist()
    return {(row["sample_id"], ident): statistics.median(values) for row in samples
            for (clip, ident), values in yaws.items() if clip == row["clip_id"]}  # fmt: skip


def split_by_clip(index: SampleIndex, other: dict) -> tuple[list, list]:
    """(training entries, held-out entries): one held-out clip per main identity with >= 2 usable samples, the
    one with most other-clip reference views (frontal first, then sample_id); it needs at least one."""
    by_identity = defaultdict(list)
    for entry in index.entries:
        by_identity[entry.identity_ids[0]].append(entry)
    held = []
    for _, entries in sorted(by_identity.items()):
        if len(entries) < 2:
            continue
        masks = {e.sample_id: other[e.sample_id, e.identity_ids[0]] & torch.from_numpy(e.present[0]) for e in entries}
        best = min(entries, key=lambda e: (-int(masks[e.sample_id].sum()), not masks[e.sample_id][0], e.sample_id))
        if masks[best.sample_id].any():
            held.append(best)
    held_ids = {e.sample_id for e in held}
    return [e for e in index.entries if e.sample_id not in held_ids], held


def training_run(run: Path, keep: set[str], out: Path) -> Path:
    """A copy of the datakit run whose samples table holds only `keep` (through the store, whose records match)."""
    shutil.copytree(run, out)
    table = ds.dataset(out / "samples", format="parquet").to_table()
    rows = [r for r in table.to_pylist() if r["sample_id"] in keep]
    RunDir.open(out).replace_table("samples", pa.Table.from_pylist(rows, schema=table.schema))
    return out


# --- evaluation ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class HeldOut:
    """One held-out clip: its encodings with only other-clip references, and the donor of condition (c)."""

    enc: EncodedBatch
    identity_id: str
    yaw: float = 0.0
    """Median |yaw| of the identity's faces in the target clip; >= TURNED_DEG counts as a turned face."""
    donor: int = -1

    @property
    def turned(self) -> bool:
        return self.yaw >= TURNED_DEG


def encode_held_out(
    held: list, index: SampleIndex, encoders: Encoders, other: dict, yaw: dict, mfi: bool
) -> list[HeldOut]:
    """Encode the held-out samples (our reader and encoder path) and keep only references from other clips."""
    reader, items = SampleReader(index.config), []
    for entry in held:
        sample = reader.load(entry)
        batch = collate([sample], entry.bucket, index.config.ref_size) | {"sample_ids": [entry.sample_id]}
        enc = encode_batch(batch, encoders, with_refs=True, with_vit=mfi)
        keep = torch.stack([other[entry.sample_id, i] for i in entry.identity_ids]).to(enc.ref_present.device)
        enc.ref_present = enc.ref_present & keep[None]  # (1, N, S): a crop of the target clip is no reference
        main = entry.identity_ids[0]
        items.append(HeldOut(enc, main, yaw.get((entry.sample_id, main), 0.0)))
    for i, item in enumerate(items):  # (c): the next held-out clip of another identity
        item.donor = next(j % len(items) for j in range(i + 1, i + len(items) + 1)
                          if items[j % len(items)].identity_id != item.identity_id)  # fmt: skip
    return items


def with_references_of(enc: EncodedBatch, donor: EncodedBatch) -> EncodedBatch:
    """`enc` (same sample id, so the same noise and sigma draws) conditioned on `donor`'s references."""
    return dataclasses.replace(enc, ref_latents=donor.ref_latents, ref_present=donor.ref_present, vit=donor.vit)


def only_views(enc: EncodedBatch, views: tuple[str, ...] | None) -> EncodedBatch:
    """`enc` with the reference slots outside `views` marked absent (None = all kept)."""
    if views is None:
        return enc
    keep = torch.tensor([slot in views for slot in VIEW_SLOTS], device=enc.ref_present.device)
    return dataclasses.replace(enc, ref_present=enc.ref_present & keep)


@torch.no_grad()
def held_out_losses(
    model: HarmoViewDiT, items: list[HeldOut], empty_text: torch.Tensor, args: argparse.Namespace, bf16: bool,
    views: tuple[str, ...] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Mean flow-matching loss per condition over held-out clips x `--draws` fixed (noise, sigma) draws: overall
    ("own", "none", "other", and "frontal": own references with the frontal slot only), split at sigma 0.5
    ("own@low", ... for sigma < 0.5; "own@high", ...) and on turned targets only ("own@turned", ...).
    `views`: the reference views the variant was trained with (the others are removed from (a) and (c))."""
    mfi_on = model.config.use_mfi
    losses = defaultdict(list)
    frontal = (VIEW_SLOTS[FRONTAL_SLOT],)
    for item in items:
        donor = with_references_of(item.enc, items[item.donor].enc)
        encs = {"own": only_views(item.enc, views), "none": item.enc, "other": only_views(donor, views),
                "frontal": only_views(item.enc, frontal)}  # fmt: skip
        for draw in range(args.draws):
            for condition, enc in encs.items():
                inputs = make_inputs(
                    enc, empty_text=empty_text, dropout=ViewDropout(), refs_on=condition != "none", mfi_on=mfi_on,
                    shift=args.shift, sigma_range=(0.0, 1.0), seed=args.eval_seed, step=draw, micro=0,
                    stream="reference_gain",
                )  # fmt: skip
                with torch.autocast(inputs.noisy.device.type, dtype=torch.bfloat16, enabled=bf16):
                    prediction = model(inputs.noisy, inputs.timesteps, inputs.text, inputs.references,
                                       inputs.vit_features)  # fmt: skip
                loss = float(flow_loss(prediction, inputs.target))
                level = "low" if inputs.timestep_values[0] < 500 else "high"  # t = 1000 sigma
                losses[condition].append(loss)
                losses[f"{condition}@{level}"].append(loss)
                if item.turned:
                    losses[f"{condition}@turned"].append(loss)
    return {key: statistics.mean(values) for key, values in losses.items()}


# --- training ----------------------------------------------------------------------------------------------


def train_config(args: argparse.Namespace, seed: int, views: tuple[str, ...] | None = None) -> TrainConfig:
    """The recipe at the benchmark's buckets and budget; a fresh config per run (the Trainer sets ref_size).
    `views` restricts the reference views loaded (samples without any of them are left out by the index)."""
    over = {"buckets": args.buckets, "steps": args.steps, "num_workers": 0, "checkpoint_every": 10**9, "seed": seed}
    over |= TINY_OVERRIDES if args.preset == "tiny" and args.init is None else {}
    over |= {k: v for k, v in {"lr": args.lr, "warmup_steps": args.warmup_steps}.items() if v is not None}
    over |= {"data": {"batch_size": args.batch_size} | ({"views": views} if views else {})}
    return apply_overrides(get_recipe(args.recipe), over)


def write_init(args: argparse.Namespace, encoders: Encoders, changes: dict, seed: int, out: Path) -> Path:
    """Initial weights of one variant: the same initial model for every variant of a seed (the trainer's own
    loader: --init weights or a random preset with a random head), with `changes` applied to its config."""
    torch.manual_seed(seed)
    model = load_initial_model(args.init, args.preset, encoders)
    config = model.config.replace(**changes)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in HarmoViewDiT(config).state_dict().items()}
    # mfi-off drops the MFI tensors, lpt-off the proxy groups and the (now empty) sinks
    state = {k: v for k, v in model.state_dict().items() if shapes.get(k) == v.shape}
    return save_checkpoint(state, out, config=config)


def train_and_score(args, paths, encoders, cache, train_run, root, items, empty_text, variant, seed, work):
    """Train one (variant, seed) with the real trainer and score its exported (EMA) weights on the held-out clips."""
    spec = VARIANTS[variant]
    init = write_init(args, encoders, spec.model, seed, work / f"init-{variant}-{seed}")
    run = TrainRun(
        manifests=[train_run], out=work / f"train-{variant}-{seed}", encoders=paths, init=init,
        video_roots=[root], cache=cache, text_len=args.text_len, vit_layers=tuple(args.vit_layers), progress=False,
    )  # fmt: skip
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = train(train_config(args, seed, spec.views), run)
    train_s = time.perf_counter() - started
    lines = [json.loads(line) for line in (run.out / "metrics.jsonl").read_text().splitlines() if line]
    first, last = (statistics.mean(r["loss"] for r in part) for part in (lines[:10], lines[-10:]))
    model, _ = from_pretrained(summary.export, device=args.device)
    bf16 = resolve_bf16("auto", torch.device(args.device))  # the Trainer's autocast
    losses = held_out_losses(model.eval(), items, empty_text, args, bf16=bf16, views=spec.views)
    shutil.rmtree(init)
    shutil.rmtree(run.out / "checkpoints", ignore_errors=True)
    shutil.rmtree(run.out / "final", ignore_errors=True)
    return losses | {"train_first10": first, "train_last10": last, "train_s": train_s}


# --- report --------------------------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    """mean +- sample standard deviation (just the value for one seed)."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def ratio(rows: list[dict], num: str, den: str) -> list[float]:
    """num / den per seed (rows without that sigma range left out)."""
    return [r[num] / r[den] for r in rows if num in r and den in r]


def print_table(results: dict[str, list[dict]]) -> None:
    print(
        "\n| variant | seeds | train loss first -> last 10 steps | held-out loss (a) own refs | (b) no refs | "
        "(c) other's refs | **b/a** | **c/a** | b/a per seed | c/a per seed |\n" + "|---" * 10 + "|"
    )
    for variant, rows in results.items():
        if not rows:
            continue
        b_a, c_a = ratio(rows, "none", "own"), ratio(rows, "other", "own")
        col = {key: spread([r[key] for r in rows]) for key in ("train_first10", "train_last10", *CONDITIONS)}
        print(
            f"| {variant} | {len(rows)} | {col['train_first10']} -> {col['train_last10']} | {col['own']} | "
            f"{col['none']} | {col['other']} | **{spread(b_a)}** | **{spread(c_a)}** | "
            f"{' '.join(f'{v:.3f}' for v in b_a)} | {' '.join(f'{v:.3f}' for v in c_a)} |",
            flush=True,
        )
    print("\nBy noise level (the same draws split at sigma 0.5; shift 5 puts most draws above it):\n")
    print("| variant | b/a sigma < 0.5 | c/a sigma < 0.5 | b/a sigma >= 0.5 | c/a sigma >= 0.5 |\n" + "|---" * 5 + "|")
    for variant, rows in results.items():
        if rows:
            cells = [spread(ratio(rows, f"{c}@{level}", f"own@{level}")) for level in ("low", "high")
                     for c in ("none", "other")]  # fmt: skip
            print(f"| {variant} | {' | '.join(cells)} |")
    print_turned(results)


def print_turned(results: dict[str, list[dict]]) -> None:
    """Frontal only vs all views: the same draws on the targets whose face is turned (and, for scale, on all)."""
    print(
        f"\nFrontal only vs all views, targets whose face is turned (median |yaw| >= {TURNED_DEG:g} deg); 'frontal' = "
        "(a) with the frontal reference slot only, scored with the same weights:\n\n| variant | (a) own refs | "
        "frontal ref only | (b) no refs | **frontal/a** | b/a | c/a | frontal/a, all targets |\n" + "|---" * 8 + "|"
    )
    for variant, rows in results.items():
        if rows and "own@turned" in rows[0]:
            col = {c: spread([r[f"{c}@turned"] for r in rows]) for c in ("own", "frontal", "none")}
            f_a, b_a, c_a = (spread(ratio(rows, f"{c}@turned", "own@turned")) for c in ("frontal", "none", "other"))
            print(f"| {variant} | {col['own']} | {col['frontal']} | {col['none']} | **{f_a}** | {b_a} | {c_a} | "
                  f"{spread(ratio(rows, 'frontal', 'own'))} |")  # fmt: skip
    full, frontal = results.get("full") or [], results.get("frontal-only") or []
    per_seed = [f["own@turned"] / a["own@turned"] for f, a in zip(frontal, full, strict=False) if "own@turned" in a]
    if per_seed:
        seeds = " ".join(f"{v:.3f}" for v in per_seed)
        print(f"\nTrained on the frontal view only vs on all views, (a) on turned targets: frontal-only / full = "
              f"{spread(per_seed)} ({seeds} per seed; > 1: all views help)")  # fmt: skip


def run_benchmark(args: argparse.Namespace, work: Path) -> None:
    started = time.perf_counter()
    run = args.run or build_run(work / "run")
    root, other, yaw = video_root(run), other_clip_slots(run), target_yaw(run)
    if args.encoders_dir:
        paths = EncoderPaths.from_wan_dir(args.encoders_dir, vit=args.vit)
    else:
        from harmoview.testing import write_tiny_encoders

        paths = write_tiny_encoders(work / "encoders")
    device = torch.device(args.device)
    bf16 = resolve_bf16("auto", device)
    encoders = Encoders.load(paths, device=device, text_len=args.text_len, vit_layers=args.vit_layers,
                             **training_dtypes(bf16))  # fmt: skip
    data = train_config(args, 0).data
    ref_hw = load_initial_model_config(args, encoders).ref_latent_hw
    data.ref_size = (ref_hw[0] * encoders.spatial_stride, ref_hw[1] * encoders.spatial_stride)
    index = SampleIndex.open([run], data, [root])
    train_entries, held = split_by_clip(index, other)
    if not held:
        raise SystemExit(f"no identity of {run} has 2 usable samples with references from other clips")
    train_run = training_run(run, {e.sample_id for e in train_entries}, work / "train-run")
    with contextlib.redirect_stdout(io.StringIO()):
        build_cache([run], work / "cache", encoders, data, video_roots=[root], progress=False)
    items = encode_held_out(held, index, encoders, other, yaw, mfi=encoders.has_vit)
    empty_text = encoders.encode_text([""])[0]  # (Lt, Dt)
    identities = {e.identity_ids[0] for e in index.entries}
    views = [int(i.enc.ref_present.sum()) for i in items]
    print(
        f"run {run}: {len(index)} usable samples of {len(identities)} main identities; {len(held)} identities have "
        f">= 2 samples with references from other clips: 1 clip each held out ({len(train_entries)} train), "
        f"{sum(views)} other-clip reference views on the held-out clips ({', '.join(map(str, views))}); median "
        f"|yaw| of the target face {', '.join(f'{i.yaw:.0f}' for i in items)} deg: {sum(i.turned for i in items)} "
        f"turned (>= {TURNED_DEG:g})\n"
        f"recipe {args.recipe} ({args.buckets} buckets, {data.views} views), preset {args.preset}"
        f"{f', init {args.init}' if args.init else ''}, {args.steps} steps x batch {args.batch_size}, "
        f"lr {train_config(args, 0).lr:g}; seeds {args.seeds}; {args.draws} fixed (noise, sigma) draws per "
        f"held-out clip (eval seed {args.eval_seed}, shift {args.shift}); {device}, {torch.get_num_threads()} "
        f"torch threads; setup {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    for seed, variant in [(seed, variant) for seed in args.seeds for variant in args.variants]:  # seed-major
        if args.budget_s and time.perf_counter() - started > args.budget_s:
            print(f"budget of {args.budget_s:g} s spent: {variant} seed {seed} and later not trained", flush=True)
            break
        r = train_and_score(args, paths, encoders, work / "cache", train_run, root, items, empty_text, variant,
                            seed, work)  # fmt: skip
        results[variant].append(r)
        print(
            f"  {variant} seed {seed}: trained {r['train_s']:.0f} s, loss {r['train_first10']:.3f} -> "
            f"{r['train_last10']:.3f}; held-out own {r['own']:.4f} none {r['none']:.4f} other {r['other']:.4f}",
            flush=True,
        )
    print_table(results)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def load_initial_model_config(args: argparse.Namespace, encoders: Encoders):
    """The model config of the run (for the reference crop size) without building the model."""
    from harmoview.model.weights import initial_config

    return initial_config(args.init, args.preset, encoders)[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="datakit run of the shipped footage (default: build one in --work)")
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one, deleted)")
    p.add_argument("--recipe", default="pvc-stage3", choices=list(RECIPES))
    p.add_argument("--buckets", default="tiny", choices=list(BUCKETS))
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per training run")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, help=f"default: the recipe's ({TINY_OVERRIDES} for --preset tiny)")
    p.add_argument("--warmup-steps", type=int, help="default: the recipe's (0 for --preset tiny)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (weights, noise, dropout)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--draws", type=int, default=32, help="fixed (noise, sigma) draws per held-out clip")
    p.add_argument("--eval-seed", type=int, default=1234, help="seed of the evaluation draws (same for all runs)")
    p.add_argument("--shift", type=float, default=5.0, help="sigma shift of the evaluation draws (training's)")
    p.add_argument("--budget-s", type=float, default=0, help="stop starting new runs after this many s (0 = none)")
    p.add_argument("--preset", default="tiny", help="DiT preset (random weights unless --init)")
    p.add_argument("--init", type=Path, help="initial weights (e.g. a diffusers Wan folder)")
    p.add_argument("--wan-dir", dest="encoders_dir", type=Path, help="diffusers Wan folder (default: tiny random)")
    p.add_argument("--vit", type=Path, help="open_clip ViT folder (MFI) with --wan-dir")
    p.add_argument("--vit-layers", type=int, nargs="+", default=[0, 1], help="ViT depths (tiny ViT: 0 1)")
    p.add_argument("--text-len", type=int, default=16, help="text tokens (Wan: 512)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--out", type=Path, help="also write the report to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tee = Tee()
    with contextlib.redirect_stdout(tee):
        print(f"# Reference gain (issue 17), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
            run_benchmark(args, args.work)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                run_benchmark(args, Path(tmp))
    if args.out:
        args.out.write_text(tee.text)


if __name__ == "__main__":
    main()
