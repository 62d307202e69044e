"""The global passes over every video's output, in the stage order of a build, declared here once:

0. **contexts**: clips showing one recording (copies, re-uploads) share a ``context_id``
   (:mod:`datakit.passes.contexts`, from the per-video fingerprints; stored in ``_stage/contexts``);
1. **identities**: track gates, identities linked across videos, reference views (``identity_pass``;
   writes ``tracks``, ``identities``, ``reference_views``);
2. **cheap clip filters**: the per-video clips with the filters over the per-video scan's scores
   (:data:`datakit.clips.filters.CHEAP_FILTERS`); they decide which clips the models see;
3. **captions**: a resumable per-clip stage over the clips kept so far (:mod:`datakit.clips.captions`);
4. **model scores**: open_clip scores of those clips against their captions (:mod:`datakit.clips.scores`);
5. **model-based filters**: ``low_aesthetic`` / ``low_clip_score`` (:data:`datakit.clips.filters.MODEL_FILTERS`);
6. **samples**: training samples from the kept clips; ``clips`` and ``samples`` are written once, here.

:func:`run_passes` is that order. Steps 3 and 4 need models and an executor (``pipelines`` runs them on
Ray), so the caller hands them in as :data:`ClipStep` callables and this module stays pure; either may be
left out (``datakit filter`` runs no model), and their stored results are attached all the same. The
passes run in the driver on Arrow tables: track embeddings are small (one vector per track), and the
identity linker's kNN graph is built in blocks, so memory stays proportional to the number of tracks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from datakit import schema
from datakit.clips.base import kept_clips
from datakit.clips.captions import attach_captions
from datakit.clips.filters import CHEAP_FILTERS, MODEL_FILTERS, apply_clip_filters
from datakit.clips.scores import attach_clip_scores
from datakit.config import BuildConfig
from datakit.faces import FaceStack
from datakit.passes.consolidate import consolidate_passed, continuity_chains
from datakit.passes.contexts import context_pass, stored_contexts
from datakit.passes.gates import GateThresholds, apply_gates, reference_candidates
from datakit.passes.identities import build_identities, link_identities
from datakit.passes.references import select_references
from datakit.passes.samples import build_samples
from datakit.store import RunDir

#: a resumable per-clip stage run by an executor: the kept clips in, its summary out (it commits its results
#: to ``_stage/<stage>``, where the passes attach them from)
ClipStep = Callable[[pa.Table], object]


@dataclass(slots=True)
class PassResult:
    """What :func:`run_passes` did: seconds per pass, and the summary each per-clip step returned."""

    seconds: dict[str, float] = field(default_factory=dict)
    steps: dict[str, object] = field(default_factory=dict)  #: "captions" / "clip_scores" -> their summary


def run_passes(
    run: RunDir,
    cfg: BuildConfig,
    stack: FaceStack | None = None,
    *,
    captions: ClipStep | None = None,
    scores: ClipStep | None = None,
) -> PassResult:
    """Every global pass in the stage order of the module docstring; writes ``clips`` and ``samples`` once.

    ``stack``: the face stack of the build, for the identity passes; None keeps the run's identity tables
    (``datakit caption`` / ``datakit filter`` on a finished run). ``captions`` / ``scores``: the per-clip
    stages, run on the kept clips; None runs none (the stored results still reach ``clips``).
    """
    t = time.perf_counter()
    clips = run.read("clips", schema.CLIPS, stage=True)
    clips = clips.take(pc.sort_indices(clips, [("clip_id", "ascending")]))
    clips = context_pass(run, clips, cfg.sample_fps)  # 0. contexts: duplicate footage, read by the references
    seconds = {"contexts": time.perf_counter() - t}
    result = PassResult(seconds=seconds | (identity_pass(run, cfg, stack, clips) if stack is not None else {}))  # 1.
    t = time.perf_counter()
    clips = apply_clip_filters(clips, cfg, CHEAP_FILTERS)  # 2. cheap clip filters
    result.seconds["clip_filters"] = time.perf_counter() - t
    if captions is not None:
        result.steps["captions"] = captions(kept_clips(clips))  # 3. captions
    clips = attach_captions(clips, run, cfg)  # from _stage/captions, latest per clip
    if scores is not None:
        result.steps["clip_scores"] = scores(kept_clips(clips))  # 4. model scores, against those captions
    t = time.perf_counter()
    clips = attach_clip_scores(clips, run, cfg)  # from _stage/clip_scores, when a scorer is configured
    clips = apply_clip_filters(clips, cfg, MODEL_FILTERS, fresh=False)  # 5. model-based filters
    result.seconds["model_filters"] = time.perf_counter() - t
    t = time.perf_counter()
    write_samples(run, cfg, clips)  # 6. samples
    result.seconds["samples"] = time.perf_counter() - t
    return result


def identity_pass(run: RunDir, cfg: BuildConfig, stack: FaceStack, clips: pa.Table) -> dict[str, float]:
    """Gate tracks, consolidate each video's pieces (dropping fragments), link identities, pick references;
    writes ``tracks``, ``identities``, ``reference_views``. ``clips``: the run's per-video clips (their
    boundaries tell length splits from cuts)."""
    dim = stack.embedder.dim
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    faces = run.read("faces", schema.faces_schema(dim))
    tracks = run.read("tracks", schema.tracks_schema(dim), stage=True)
    crops = run.read("crops", schema.CROPS, stage=True)
    seconds["read"] = time.perf_counter() - t

    t = time.perf_counter()
    gates = GateThresholds.resolve(cfg, stack.detector)
    # Gates judge whole appearances: pieces joined across length splits pass or fail together.
    chains = continuity_chains(tracks, faces, clips, cfg, stack.embedder)
    tracks = apply_gates(tracks, faces, gates, chains)
    seconds["gates"] = time.perf_counter() - t

    t = time.perf_counter()
    # Within each video first: pieces joined across length splits, then one person's chains by set-to-set
    # similarity; fragments that join nothing are dropped (datakit.passes.consolidate).
    tracks, groups = consolidate_passed(tracks, faces, clips, cfg, stack.embedder, chains)
    passed = pc.is_null(tracks.column("drop_reason"))
    seconds["consolidate"] = time.perf_counter() - t

    t = time.perf_counter()
    threshold = cfg.same_person_cosine or stack.embedder.same_person_cosine
    keep = passed.to_numpy(zero_copy_only=False)
    linked = link_identities(tracks.filter(passed), same_person_cosine=threshold, groups=groups[keep])
    identities = build_identities(linked, faces, dim)
    # Dropped tracks stay in `tracks` (with their drop_reason and no identity), in track_id order.
    tracks = pa.concat_tables([linked, tracks.filter(pc.invert(passed)).cast(linked.schema)])
    tracks = tracks.take(pc.sort_indices(tracks, [("track_id", "ascending")]))
    seconds["identities"] = time.perf_counter() - t

    t = time.perf_counter()
    refs = select_references(
        reference_candidates(faces, gates),
        crops,
        tracks,
        per_view=cfg.references_per_view,
        near_duplicate_ncc=cfg.near_duplicate_ncc,
        contexts=stored_contexts(run),
    )
    seconds["references"] = time.perf_counter() - t
    for name, table in (("tracks", tracks), ("identities", identities), ("reference_views", refs)):
        run.replace_table(name, table)
    return seconds


def write_samples(run: RunDir, cfg: BuildConfig, clips: pa.Table) -> None:
    """Emit the training samples of the kept ``clips``; writes ``clips`` and ``samples``. Needs no model,
    not even the embedding width: the samples need the tracks' links, not their vectors."""
    tracks = run.read("tracks").drop_columns(["embedding"])
    linked = tracks.filter(pc.is_valid(tracks.column("identity_id")))
    refs = run.read("reference_views", schema.REFERENCE_VIEWS)
    videos = run.read("videos", schema.VIDEOS)
    samples = build_samples(kept_clips(clips), linked, refs, videos, min_clip_s=cfg.min_sample_s)
    run.replace_table("clips", clips)
    run.replace_table("samples", samples)
