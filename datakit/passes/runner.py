"""The global passes over every video's output: identities, reference views, training samples.

They run in the driver on Arrow tables: track embeddings are small (one vector per track), and the
identity linker's kNN graph is built in blocks, so memory stays proportional to the number of tracks.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from datakit import schema
from datakit.clips.captions import attach_captions
from datakit.clips.filters import apply_clip_filters
from datakit.clips.scores import attach_clip_scores
from datakit.config import BuildConfig
from datakit.faces import FaceStack
from datakit.passes.gates import GateThresholds, apply_gates, reference_candidates
from datakit.passes.identities import build_identities, link_identities
from datakit.passes.references import select_references
from datakit.passes.samples import build_samples
from datakit.store import RunDir


def run_global(run: RunDir, cfg: BuildConfig, stack: FaceStack) -> dict[str, float]:
    """Every global pass in order: identities (gates, linking, references), then clips and samples."""
    seconds = identity_pass(run, cfg, stack)
    seconds.update(clip_pass(run, cfg))
    return seconds


def identity_pass(run: RunDir, cfg: BuildConfig, stack: FaceStack) -> dict[str, float]:
    """Gate tracks, link identities, pick references; writes ``tracks``, ``identities``, ``reference_views``."""
    dim = stack.embedder.dim
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    faces = run.read("faces", schema.faces_schema(dim))
    tracks = run.read("tracks", schema.tracks_schema(dim), stage=True)
    crops = run.read("crops", schema.CROPS, stage=True)
    seconds["read"] = time.perf_counter() - t

    t = time.perf_counter()
    gates = GateThresholds.resolve(cfg, stack.detector)
    tracks = apply_gates(tracks, faces, gates)
    passed = pc.is_null(tracks.column("drop_reason"))
    seconds["gates"] = time.perf_counter() - t

    t = time.perf_counter()
    threshold = cfg.same_person_cosine or stack.embedder.same_person_cosine
    linked = link_identities(tracks.filter(passed), same_person_cosine=threshold)
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
    )
    seconds["references"] = time.perf_counter() - t
    for name, table in (("tracks", tracks), ("identities", identities), ("reference_views", refs)):
        run.replace_table(name, table)
    return seconds


def clip_pass(run: RunDir, cfg: BuildConfig) -> dict[str, float]:
    """Complete the per-video clips (captions, scores, filters) and emit the training samples from the kept
    clips; writes ``clips`` and ``samples``. Cheap: it needs no model (not even the embedding width), so it
    runs again whenever filters or captions change."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    clips = run.read("clips", schema.CLIPS, stage=True)
    clips = attach_captions(clips, run, cfg)  # datakit.clips.captions: from _stage/captions, latest per clip
    clips = attach_clip_scores(clips, run, cfg)  # datakit.clips.scores: open_clip scores, when configured
    tracks = run.read("tracks").drop_columns(["embedding"])  # samples need the links, not the vectors
    linked = tracks.filter(pc.is_valid(tracks.column("identity_id")))
    refs = run.read("reference_views", schema.REFERENCE_VIEWS)
    videos = run.read("videos", schema.VIDEOS)
    clips = clips.take(pc.sort_indices(clips, [("clip_id", "ascending")]))
    seconds["clips"] = time.perf_counter() - t

    t = time.perf_counter()
    clips = apply_clip_filters(clips, cfg)  # drop_reason per clip (datakit.clips.filters); samples from kept clips
    seconds["filters"] = time.perf_counter() - t

    t = time.perf_counter()
    kept = clips.filter(pc.is_null(clips.column("drop_reason")))
    samples = build_samples(kept, linked, refs, videos, min_clip_s=cfg.min_sample_s)
    seconds["samples"] = time.perf_counter() - t
    run.replace_table("clips", clips)
    run.replace_table("samples", samples)
    return seconds
