"""The global passes over every video's output: identities, reference views, training samples.

They run in the driver on Arrow tables: track embeddings are small (one vector per track), and the
identity linker's kNN graph is built in blocks, so memory stays proportional to the number of tracks.
"""

from __future__ import annotations

import time

from datakit import schema
from datakit.config import BuildConfig
from datakit.faces import FaceStack
from datakit.identities import build_identities, link_identities
from datakit.references import select_references
from datakit.samples import build_samples
from datakit.store import RunDir


def run_global(run: RunDir, cfg: BuildConfig, stack: FaceStack) -> dict[str, float]:
    """Link identities, pick references, emit samples; write the four global tables. Returns timings."""
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
    threshold = cfg.same_person_cosine or stack.embedder.same_person_cosine
    tracks = link_identities(tracks, same_person_cosine=threshold)
    identities = build_identities(tracks, faces, dim)
    seconds["identities"] = time.perf_counter() - t

    t = time.perf_counter()
    refs = select_references(faces, crops, tracks, per_view=cfg.references_per_view)
    seconds["references"] = time.perf_counter() - t

    t = time.perf_counter()
    samples = build_samples(clips, tracks, refs, videos, min_clip_s=cfg.min_sample_s)
    seconds["samples"] = time.perf_counter() - t

    for name, table in (
        ("tracks", tracks),
        ("identities", identities),
        ("reference_views", refs),
        ("samples", samples),
    ):
        run.replace_table(name, table)
    return seconds
