"""`harmoview train`: rectified-flow training of HarmoView on datakit manifests, one PVC stage per run.

Read `Trainer.run` top to bottom: every step draws `grad_accum` micro-batches, encodes them (or reads
the cache), applies view/text dropout, noises the latents, and regresses the velocity on the video
tokens; then clip, AdamW, EMA, log, checkpoint. Resume is automatic: a run pointed at an output
directory with a checkpoint continues from it with the same loss sequence it would have had.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from harmoview.data.dataset import SampleIndex, TrainDataset
from harmoview.flow import expert_sigma_range, flow_loss
from harmoview.model.dit import HarmoViewDiT
from harmoview.model.encoders import EncoderPaths, Encoders, encoder_record_changes, training_dtypes
from harmoview.model.weights import check_export_encoders, save_checkpoint
from harmoview.train.cache import CachedDataset, find_cache
from harmoview.train.checkpoint import (
    ConfigChangeError,
    config_changes,
    full_model_state,
    remove_incomplete,
    resume_latest,
)
from harmoview.train.checkpoint import save_checkpoint as save_training_checkpoint
from harmoview.train.inputs import EncodedBatch, TrainInputs, encode_batch, generator, make_inputs
from harmoview.train.log import MetricsLog, sum_counters_over_ranks, sum_over_ranks
from harmoview.train.optim import EMA, build_optimizer, warmup_lr
from harmoview.train.parallel import (
    all_reduce_any,
    all_reduce_mean,
    barrier,
    init_distributed,
    resolve_bf16,
)
from harmoview.train.preview import render_preview
from harmoview.train.recipes import TrainConfig
from harmoview.train.trainable import merge_lora, prepare_model


@dataclass(kw_only=True)
class TrainRun:
    """The inputs and output of one training run (the config says how to train)."""

    manifests: list[Path]
    """datakit run directories whose `samples` are trained on."""
    out: Path
    """Output directory: checkpoints/, final/, metrics.jsonl, config.json."""
    encoders: EncoderPaths
    """Local folders of the VAE, text encoder (+ tokenizer) and MFI ViT."""
    init: Path | None = None
    """Initial weights: a Wan checkpoint (native or diffusers layout) or a previous stage's `final/`."""
    preset: str | None = None
    """Random initial weights of a preset when `init` is None (experiments, tests)."""
    video_roots: list[Path] | None = None
    """Where each run's videos are (default: the `src` recorded in its run.json)."""
    cache: Path | None = None
    """A `harmoview cache` folder to read encodings from (must exist and match encoders and buckets; samples
    missing from it are skipped and counted as `uncached`)."""
    text_len: int = 512
    """Text tokens fed to the model (Wan: 512)."""
    vit_layers: tuple[int, ...] = (-2,)
    """ViT depths whose features MFI injects."""
    progress: bool = True
    allow_config_change: bool = False
    """Resume (or start from `init`) although the config or encoder settings differ from the checkpoint's."""


@dataclass
class TrainSummary:
    """What a finished run did (printed by the CLI, returned by `train`)."""

    steps: int = 0
    resumed_from: int = 0
    samples_seen: int = 0
    final_loss: float = math.nan
    samples_per_s: float = 0.0
    skipped: Counter = field(default_factory=Counter)
    nonfinite_steps: int = 0
    empty_batches: int = 0
    text_dropped: int = 0
    null_captions: int = 0
    usable_samples: int = 0
    left_out: dict = field(default_factory=dict)
    export: Path | None = None
    cache: Path | None = None

    def format(self) -> str:
        """The summary as console lines."""
        lines = [
            f"trained steps {self.resumed_from}..{self.steps} on {self.usable_samples} usable samples "
            f"({self.samples_seen} samples seen, {self.samples_per_s:.2f} samples/s), final loss {self.final_loss:.4g}",
            f"  captions   : {self.null_captions} of the usable samples have none (trained with the empty prompt); "
            f"{self.text_dropped} captions dropped by text dropout",
        ]
        if self.left_out:
            lines.append(f"  left out   : {', '.join(f'{k} {v}' for k, v in sorted(self.left_out.items()))}")
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        lines.append(f"  skipped    : {skipped} (unreadable samples, logged with their sample_id)")
        lines.append(f"  non-finite : {self.nonfinite_steps} steps skipped")
        lines.append(f"  encodings  : {'cache ' + str(self.cache) if self.cache else 'encoded on the fly'}")
        if self.export:
            lines.append(f"  weights    : {self.export}  (next stage: --init {self.export})")
        return "\n".join(lines)


class Trainer:
    """One training run: model, optimiser, data, and the loop."""

    def __init__(self, config: TrainConfig, run: TrainRun) -> None:
        self.config, self.run_spec = config, run
        self.dist = init_distributed()
        self.bf16 = resolve_bf16(config.mixed_precision, self.dist.device)
        self.encoders = Encoders.load(
            run.encoders, device=self.dist.device, text_len=run.text_len, vit_layers=run.vit_layers,
            **training_dtypes(self.bf16),
        )  # fmt: skip
        self.model = self._build_model()
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay, config.betas)
        self.summary = TrainSummary()
        self.index = self._open_index()
        self.dataset = self._dataset()
        self.step, self.position = 0, 0
        self.empty_text = self.encoders.encode_text([""])[0]  # (Lt, Dt)
        if isinstance(self.dataset, CachedDataset):
            self.encoders.release_text_and_vit()  # every text and ViT feature now comes from the cache
        self.log = MetricsLog(run.out, enabled=self.dist.is_main)
        self.preview_batch: dict | None = None  # previews follow the first sample this run draws

    # ----------------------------------------------------------------------------------------------
    def _build_model(self) -> HarmoViewDiT:
        c, run = self.config, self.run_spec
        if run.init is not None and not run.allow_config_change:  # e.g. other --vit-layers than the last stage
            check_export_encoders(run.init, self.encoders, what="--init", hint=" (or pass --allow-config-change)")
        return prepare_model(
            run.init, run.preset, self.encoders, self.dist, trainable=c.trainable, lora_rank=c.lora_rank,
            lora_alpha=c.lora_alpha, activation_checkpointing=c.activation_checkpointing, bf16=self.bf16,
        )  # fmt: skip

    def _open_index(self) -> SampleIndex:
        data = self.config.data
        cfg = self.model.config
        data.ref_size = (
            cfg.ref_latent_hw[0] * self.encoders.spatial_stride,
            cfg.ref_latent_hw[1] * self.encoders.spatial_stride,
        )
        index = SampleIndex.open(self.run_spec.manifests, data, self.run_spec.video_roots)
        self.summary.usable_samples, self.summary.left_out = len(index), dict(index.left_out)
        if self.dist.is_main:
            for problem in index.problems:  # e.g. a video_path leaving its root: named, counted, never read
                tqdm.write(problem)
        self.summary.null_captions = index.num_null_captions
        return index

    def _dataset(self) -> TrainDataset:
        """Batches from `--cache` (which must match these encoders and buckets), else pixels to encode."""
        rank, world = self.dist.rank, self.dist.world_size
        if self.run_spec.cache is not None:
            folder, message = find_cache(self.run_spec.cache, self.encoders, self.config.data, self.index)
            if self.dist.is_main:
                tqdm.write(message)
            self.summary.cache = folder
            return CachedDataset(self.index, folder, rank=rank, world_size=world)
        return TrainDataset(self.index, rank=rank, world_size=world)

    # ----------------------------------------------------------------------------------------------
    def run(self) -> TrainSummary:
        """Train `config.steps` optimiser steps (continuing from the latest checkpoint when there is one)."""
        c = self.config
        self._resume_or_start()
        batches = iter(self._loader())
        bar = tqdm(total=c.steps, initial=self.step, disable=not (self.run_spec.progress and self.dist.is_main))
        started, seen_at_start = time.perf_counter(), self.summary.samples_seen
        while self.step < c.steps:
            step_started = time.perf_counter()
            lr, loss, grad_norm, finite, num_samples, seen = self._train_step(batches)
            self.step += 1
            self.summary.samples_seen += num_samples
            rate = (self.summary.samples_seen - seen_at_start) / max(time.perf_counter() - started, 1e-9)
            self.summary.final_loss, self.summary.samples_per_s = loss, rate
            if self.step % c.log_every == 0 or self.step == c.steps:
                self.log.write(
                    step=self.step, loss=loss, lr=lr, grad_norm=grad_norm, samples=num_samples, samples_per_s=rate,
                    step_s=time.perf_counter() - step_started, finite=finite, **seen,
                )  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.2f}")
            if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                self._save()
            if c.preview_every and self.step % c.preview_every == 0:
                self._preview()
        bar.close()
        self.summary.steps = self.step
        self.summary.export = self._export()
        return self.summary

    def _train_step(self, batches) -> tuple[float, float, float, bool, int, dict]:
        """One optimiser step: warm-up lr, forward/backward of `grad_accum` micro-batches, clip, AdamW, EMA.

        A NaN or inf loss or gradient on any rank skips the update on every rank. Returns (lr, loss,
        grad_norm, finite, samples of all ranks, what this rank saw) for the metrics.
        """
        c = self.config
        lr = warmup_lr(self.step, c.lr, c.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, num_samples, seen = self._accumulate(batches)
        grad_norm = self._clip()
        finite = not all_reduce_any(not (math.isfinite(loss) and math.isfinite(grad_norm)), self.dist.device)
        if finite:
            self.optimizer.step()
            if self.ema:
                self.ema.update(self.model, num_steps=self.step + 1)  # decay warm-up (optim.ema_decay_at)
        else:  # a NaN/inf anywhere: skip the update on every rank, count it, say so
            self.summary.nonfinite_steps += 1
            tqdm.write(f"step {self.step}: non-finite loss or gradient, update skipped")
        self.optimizer.zero_grad(set_to_none=True)
        return lr, loss, grad_norm, finite, num_samples, seen

    def _accumulate(self, batches) -> tuple[float, int, dict]:
        """Forward and backward `grad_accum` micro-batches.

        Returns the mean loss over ranks, the samples used by all ranks, and what the step saw for the metrics:
        timestep range and shares of micro-batches with references / unconditional (this rank's; the draw is
        shared by all ranks), and reference views present / kept and captions dropped, summed over ranks.
        The skip and text-dropout counters of the summary are summed over ranks here too.
        """
        c, total, t_seen, refs_seen, uncond_seen = self.config, 0.0, [], 0, 0
        counts = {"samples": 0, "views_present": 0, "views_kept": 0}
        skipped_before, dropped_before, empties_before = (
            Counter(self.summary.skipped), self.summary.text_dropped, self.summary.empty_batches,
        )  # fmt: skip
        # A device sync per micro-batch stalls the GPU queue: only on logged steps, and only when asked.
        timing = c.sync_timing and self.dist.device.type == "cuda" and self._logs_step(self.step + 1)
        wait_s = encode_s = 0.0
        for micro in range(c.grad_accum):
            started = time.perf_counter()
            batch = self._next_batch(batches)
            wait_s += time.perf_counter() - started
            if self.preview_batch is None:
                self.preview_batch = batch
            conditions = c.dropout.draw_step(generator(c.seed, c.recipe, self.step, micro, "refs"))
            refs_on = c.use_references and conditions.refs_on
            mfi_on = refs_on and self.model.config.use_mfi and self.encoders.has_vit
            started = time.perf_counter()
            enc = self._encode(batch, refs_on, mfi_on)
            if timing:
                torch.cuda.synchronize()  # so that encode_s is the encoders' time, not the launch time
            encode_s += time.perf_counter() - started
            loss, inputs = self._forward_backward(enc, micro, refs_on, mfi_on, conditions.uncond)
            total = total + loss / c.grad_accum  # a tensor: one device sync per step, not per micro-batch
            counts["samples"] += len(enc.sample_ids)
            counts["views_present"] += inputs.num_views_present
            counts["views_kept"] += inputs.num_views_kept
            t_seen += inputs.timestep_values
            refs_seen += refs_on
            uncond_seen += conditions.uncond
        counts |= {
            "text_dropped": self.summary.text_dropped - dropped_before,
            "empty_batches": self.summary.empty_batches - empties_before,
        }  # fmt: skip
        totals, skipped = sum_over_ranks(counts, self.dist.device), self.summary.skipped - skipped_before
        self.summary.skipped = skipped_before + sum_counters_over_ranks(skipped, self.dist.device)
        self.summary.text_dropped = dropped_before + totals["text_dropped"]
        self.summary.empty_batches = empties_before + totals["empty_batches"]
        seen = {
            "t_min": min(t_seen), "t_max": max(t_seen), "refs_on": refs_seen / c.grad_accum,
            "uncond": uncond_seen / c.grad_accum, "views_present": totals["views_present"],
            "views_kept": totals["views_kept"], "text_dropped": totals["text_dropped"],
            "data_wait_s": wait_s, "encode_s": encode_s,
        }  # fmt: skip
        # Loss averaged and samples counted over every rank (FSDP averages the gradients the same way).
        return all_reduce_mean(float(total), self.dist.device), totals["samples"], seen

    def _logs_step(self, step: int) -> bool:
        """True when optimiser step `step` (1-based) writes a metrics line."""
        return step % self.config.log_every == 0 or step == self.config.steps

    def _forward_backward(
        self, enc: EncodedBatch, micro: int, refs_on: bool, mfi_on: bool, uncond: bool
    ) -> tuple[torch.Tensor, TrainInputs]:
        """Dropout, noising and the velocity loss of one micro-batch, backpropagated scaled by 1/grad_accum.

        Returns the micro-batch's loss (a detached tensor) and its inputs (timesteps, dropout counts).
        """
        c = self.config
        inputs = make_inputs(
            enc, empty_text=self.empty_text, dropout=c.dropout, refs_on=refs_on, mfi_on=mfi_on, shift=c.shift,
            sigma_range=expert_sigma_range(c.expert), seed=c.seed, step=self.step, micro=micro, stream=c.recipe,
            uncond=uncond,
        )  # fmt: skip
        with torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            prediction = self.model(
                inputs.noisy, inputs.timesteps, inputs.text, inputs.references, inputs.vit_features
            )  # (B, C, f, h, w)
        loss = flow_loss(prediction, inputs.target)  # () float32, over the video tokens only
        (loss / c.grad_accum).backward()
        self.summary.text_dropped += inputs.num_text_dropped
        return loss.detach(), inputs

    def _encode(self, batch: dict, refs_on: bool, mfi_on: bool) -> EncodedBatch:
        if "encoded" in batch:  # read from the cache
            return batch["encoded"].to(self.dist.device)
        return encode_batch(batch, self.encoders, with_refs=refs_on, with_vit=mfi_on)

    def _next_batch(self, batches) -> dict:
        """The next non-empty batch of this rank's stream; skipped samples are counted and logged."""
        empties = 0
        while True:
            batch = next(batches)
            self.position = batch["position"] + 1
            for sample_id, reason, message in batch["skipped"]:
                self.summary.skipped[reason] += 1
                tqdm.write(f"skipped sample {sample_id}: {reason}: {message}")
            if batch["sample_ids"]:
                return batch
            empties += 1
            self.summary.empty_batches += 1
            if empties > max(len(self.index), 1):
                raise ValueError(
                    f"no usable sample in a whole epoch: every sample was skipped ({dict(self.summary.skipped)})"
                )

    def _clip(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    # ----------------------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        self.dataset.set_position(self.position)
        workers = self.config.num_workers
        return DataLoader(
            self.dataset, batch_size=None, num_workers=workers, persistent_workers=False,
            prefetch_factor=2 if workers else None, pin_memory=self.dist.device.type == "cuda",
        )  # fmt: skip

    def _trainer_state(self) -> dict:
        positions = [0] * self.dist.world_size
        positions[self.dist.rank] = self.position
        if self.dist.enabled:
            import torch.distributed as dist

            gathered = [None] * self.dist.world_size
            dist.all_gather_object(gathered, self.position)
            positions = gathered
        s = self.summary
        counters = {
            "samples_seen": s.samples_seen, "skipped": dict(s.skipped), "nonfinite_steps": s.nonfinite_steps,
            "empty_batches": s.empty_batches, "text_dropped": s.text_dropped,
        }  # fmt: skip
        return {
            "step": self.step, "world_size": self.dist.world_size, "positions": positions,
            "recipe": self.config.recipe, "config": self.config.to_dict(), "counters": counters,
            "encoders": self.encoders.record(),
        }  # fmt: skip

    def _save(self) -> None:
        save_training_checkpoint(
            self.run_spec.out, self.step, self.model, self.optimizer, self.ema, self._trainer_state(), self.dist,
            keep=self.config.keep_checkpoints,
        )  # fmt: skip

    def _resume_or_start(self) -> None:
        out = self.run_spec.out
        if self.dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            remove_incomplete(out)
        barrier()
        # An unreadable newest checkpoint falls back to the previous kept one; another config is refused first.
        path, state = resume_latest(out, self.model, self.optimizer, self.ema, self.dist, check=self._check_resume)
        if self.dist.is_main:  # written only once the resume is accepted: a refused one leaves it as it was
            (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2, default=str))
        if path is None:
            self.log.truncate(0)
            return
        self.step = self.summary.resumed_from = state["step"]
        if state["world_size"] == self.dist.world_size:
            self.position = state["positions"][self.dist.rank]
        else:  # another world size shards the data differently: the stream restarts (weights are exact)
            tqdm.write(f"resuming a {state['world_size']}-process checkpoint on {self.dist.world_size}: data restarts")
        counters = state["counters"]
        self.summary.samples_seen = counters["samples_seen"]
        self.summary.skipped.update(counters["skipped"])
        self.summary.nonfinite_steps, self.summary.text_dropped = counters["nonfinite_steps"], counters["text_dropped"]
        self.summary.empty_batches = counters["empty_batches"]
        self.log.truncate(self.step)
        tqdm.write(f"resumed from {path} (step {self.step})")

    def _check_resume(self, path: Path, state: dict) -> None:
        """Refuse to resume checkpoint `path` with another config or other encoders (naming each difference),
        unless `allow_config_change`; a larger `steps` passes silently."""
        changes = config_changes(
            state.get("config", {}), self.config.to_dict(), saved_world_size=state.get("world_size", 1),
            world_size=self.dist.world_size,
        )  # fmt: skip
        if state.get("encoders"):
            changes += encoder_record_changes(state["encoders"], self.encoders.record())
        if not changes:
            return
        if not self.run_spec.allow_config_change:
            raise ConfigChangeError(
                f"{self.run_spec.out} holds a checkpoint ({path.name}) trained with other settings: "
                f"{'; '.join(changes)}. Resume with the same settings, use another --out, or pass "
                f"--allow-config-change (a larger --steps needs none)"
            )
        if self.dist.is_main:
            tqdm.write(f"resuming {path.name} with changed settings (--allow-config-change): {'; '.join(changes)}")

    def _preview(self) -> None:
        """Euler preview of the first sample this run drew, with its conditions (EMA weights when on).

        Every rank samples (FSDP forwards are collective); only the main rank decodes and writes.
        """
        c = self.config
        refs_on = c.use_references
        mfi_on = refs_on and self.model.config.use_mfi and self.encoders.has_vit
        enc = self._encode(self.preview_batch, refs_on, mfi_on)
        if self.ema:
            self.ema.swap(self.model)
        try:
            path = render_preview(
                self.model, self.encoders, enc, out_dir=self.run_spec.out, step=self.step,
                num_steps=c.preview_steps, shift=c.shift, seed=c.seed, fps=c.data.fps, references_on=refs_on,
                mfi_on=mfi_on, autocast_dtype=torch.bfloat16 if self.bf16 else None, write=self.dist.is_main,
            )  # fmt: skip
        finally:
            if self.ema:
                self.ema.swap(self.model)
        if self.dist.is_main:
            tqdm.write(f"step {self.step}: preview {path}")

    def _export(self) -> Path | None:
        """Write the final weights (EMA when on, LoRA merged) as a model folder the next stage can --init."""
        if self.ema:
            self.ema.swap(self.model)
        try:
            # Saved while swapped: in one process the gathered state shares storage with the parameters.
            state = full_model_state(self.model)  # collective under FSDP; rank 0 gets the tensors
            path = None
            if self.dist.is_main:
                if self.config.trainable == "lora":
                    state = merge_lora(state, self.config.lora_rank, self.config.lora_alpha)
                path = save_checkpoint(
                    state, self.run_spec.out / "final", config=self.model.config, encoders=self.encoders.record()
                )
        finally:
            if self.ema:
                self.ema.swap(self.model)
        barrier()
        return path


def train(config: TrainConfig, run: TrainRun) -> TrainSummary:
    """Run one training stage; the Python API under `harmoview train`."""
    return Trainer(config, run).run()
