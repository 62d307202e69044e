"""The global passes over every video's output: identities, reference views, training samples.

They run in the driver on Arrow tables: track embeddings are small (one vector per track), and the
identity linker's kNN graph is built in blocks, so memory stays proportional to the number of tracks.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from datakit import schema
from datakit.config import BuildConfig
from datakit.faces import FaceStack
from datakit.gates import GateThresholds, apply_gates, reference_candidates
from datakit.identities import build_identities, link_identities
from datakit.references import select_references
from datakit.samples import build_samples
from datakit.store import RunDir


def run_global(run: RunDir, cfg: BuildConfig, stack: FaceStack) -> dict[str, float]:
    """Gate tracks, link identities, pick references, emit samples; write the four global tables. Returns
    timings."""
    dim = stack.embedder.dim
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    faces = run.read("faces", schema.faces_schema(dim))
    tracks = run.read("tracks", schema.tracks_schema(dim), stage=True)
    crops = run.read("crops", schema.CROPS, stage=True)
    clips = run.read("clips", schema.CLIPS)
    videos = run.read("videos", schema.VIDEOS)
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

    t = time.perf_counter()
    samples = build_samples(clips, linked, refs, videos, min_clip_s=cfg.min_sample_s)
    seconds["samples"] = time.perf_counter() - t

    for name, table in (
        ("tracks", tracks),
        ("identities", identities),
        ("reference_views", refs),
        ("samples", samples),
    ):
        run.replace_table(name, table)
    return seconds
