"""Benchmark identity retrieval (issue 10): datakit's FAISS index vs plain numpy exact search.

    python -m benchmarks.retrieval --run RUN_DIR [--sizes 10000,100000,1000000] [--queries 500]

Vectors: the real embeddings of a shipped-footage run (track embeddings, face embeddings and identity
centroids; RUN_DIR from `datakit build --src ../shared/media/videos`), grown to N with a realistic spread:
N/20 synthetic identities, each a normalised random mixture of 2-3 real vectors plus identity noise, and
~20 copies per identity with per-copy noise (cosine to their identity ~0.95, as tracks of one person), all
L2-normalised. Queries are fresh copies of random identities (not stored), i.e. "another photo of a person
in the data". Per size: build time, single-query p50/p99 latency, recall@10 against exact search, for
numpy exact (one matrix-vector product + argpartition), faiss IndexFlatIP and datakit's automatic index
(`datakit.tools.index.build_vector_index`: exact up to EXACT_MAX, else HNSW with efSearch tuned at build).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from datakit.passes.identities import embeddings_to_numpy
from datakit.tools.index import EXACT_MAX, build_vector_index, recall_at_k

K = 10


def real_vectors(run: Path) -> np.ndarray:
    """Every real embedding of a run: face embeddings, track embeddings, identity centroids."""
    parts = []
    for table, column in (("faces", "embedding"), ("tracks", "embedding"), ("identities", "centroid")):
        col = pq.read_table(run / table, columns=[column]).column(column)
        dim = col.type.list_size
        x, valid = embeddings_to_numpy(col, dim)
        parts.append(x[valid])
    x = np.concatenate(parts)
    return x


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(real: np.ndarray, n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` stored vectors and ``queries`` query vectors with the spread described in the module doc."""
    rng = np.random.default_rng(seed)
    dim = real.shape[1]
    n_ident = max(n // 20, 1)
    mix = rng.integers(2, 4, n_ident)
    centers = np.zeros((n_ident, dim), np.float32)
    for m in (2, 3):
        rows = np.flatnonzero(mix == m)
        picks = real[rng.integers(0, len(real), (len(rows), m))]  # (R, m, D)
        w = rng.dirichlet(np.ones(m), len(rows)).astype(np.float32)
        centers[rows] = np.einsum("rm,rmd->rd", w, picks)
    centers = _unit(centers + rng.standard_normal(centers.shape).astype(np.float32) * (0.25 / np.sqrt(dim)))

    def copies(count: int) -> np.ndarray:
        owner = rng.integers(0, n_ident, count)
        out = np.empty((count, dim), np.float32)
        for s in range(0, count, 200_000):
            e = min(s + 200_000, count)
            noise = rng.standard_normal((e - s, dim)).astype(np.float32) * (0.3 / np.sqrt(dim))
            out[s:e] = _unit(centers[owner[s:e]] + noise)
        return out

    return copies(n), copies(queries)


def _latencies(fn, queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    found, times = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(fn(q))
        times.append((time.perf_counter() - t) * 1000)
    return np.stack(found), times


def bench_size(real: np.ndarray, n: int, n_queries: int, exact_max: int) -> dict:
    import faiss

    x, q = synthetic(real, n, n_queries, seed=n)
    out: dict = {"n": n, "dim": int(x.shape[1])}

    def numpy_search(v: np.ndarray) -> np.ndarray:
        s = x @ v
        top = np.argpartition(-s, K)[:K]
        return top[np.argsort(-s[top])]

    truth, t_np = _latencies(numpy_search, q)
    out["numpy"] = {
        "build_s": 0.0,
        "p50_ms": float(np.percentile(t_np, 50)),
        "p99_ms": float(np.percentile(t_np, 99)),
        "recall_at_10": 1.0,
    }

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    build = time.perf_counter() - t0
    found, t_flat = _latencies(lambda v: flat.search(v[None], K)[1][0], q)
    out["faiss_flat"] = {
        "build_s": build,
        "p50_ms": float(np.percentile(t_flat, 50)),
        "p99_ms": float(np.percentile(t_flat, 99)),
        "recall_at_10": recall_at_k(found, truth, K),
    }
    flat.reset()

    t0 = time.perf_counter()
    index = build_vector_index(x, exact_max=exact_max)
    build = time.perf_counter() - t0
    found, t_idx = _latencies(lambda v: index.search(v[None], K)[1][0], q)
    out["datakit_auto"] = {
        "kind": index.kind,
        "build_s": build,
        "p50_ms": float(np.percentile(t_idx, 50)),
        "p99_ms": float(np.percentile(t_idx, 99)),
        "recall_at_10": recall_at_k(found, truth, K),
        "recall_at_build": index.meta.get("recall_at_10"),
        "ef_search": index.meta.get("ef_search"),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a datakit run over the shipped footage")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated numbers of vectors")
    parser.add_argument("--queries", type=int, default=500, help="single queries timed per size")
    parser.add_argument("--exact-max", type=int, default=EXACT_MAX, help="largest exact index (default: datakit's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    real = real_vectors(args.run)
    print(f"{len(real)} real {real.shape[1]}-d vectors from {args.run}; {os.cpu_count()} CPUs, {platform.processor()}")
    results = []
    print("| N | method | build s | p50 ms | p99 ms | recall@10 |")
    print("|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        r = bench_size(real, n, args.queries, args.exact_max)
        results.append(r)
        for name in ("numpy", "faiss_flat", "datakit_auto"):
            m = r[name]
            if name == "datakit_auto":
                label = f"datakit auto ({m['kind']}" + (f", efSearch {m['ef_search']})" if m.get("ef_search") else ")")
            else:
                label = {"numpy": "numpy exact", "faiss_flat": "faiss IndexFlatIP"}[name]
            print(
                f"| {n:,} | {label} | {m['build_s']:.2f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                f"{m['recall_at_10']:.4f} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
