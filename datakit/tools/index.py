"""A cosine (inner-product) vector index over L2-normalised embeddings, with FAISS: exact or approximate.

- **Which kind.** Up to ``EXACT_MAX`` vectors the index is exact (``IndexFlatIP``: a scan, ~0.2 ms per 10^4
  vectors of 128-d on one core). Above it, HNSW (``IndexHNSWFlat``, inner product): p50 well under 10 ms
  at 10^6 vectors (see BENCHMARKS.md, "Retrieval"). The choice is automatic, by size.
- **Recall measured at build time.** For HNSW, ``efSearch`` is tuned on a sample of queries (stored
  vectors plus noise of a same-person spread, renormalised): the smallest value whose recall@10 against
  exact search reaches ``target_recall``. The measured recall, ``efSearch`` and build time are stored
  in the index metadata (``VectorIndex.meta``). An exact index has recall 1.0 by construction.
- **Persistence.** :func:`load_or_build` keeps an index in a folder (``vectors.faiss``, ``meta.json``
  and whatever rows table the caller writes) keyed by a caller-given content key; a folder whose key
  differs is rebuilt, written to a temporary folder and swapped in, so a reader never sees half an index.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datakit.store import staging_folder, swap_folder

__all__ = ["EXACT_MAX", "INDEX_FORMAT", "VectorIndex", "build_vector_index", "load_or_build", "recall_at_k"]

INDEX_FORMAT = 1
#: up to this many vectors the index is exact (a flat scan stays under ~1 ms; measured in benchmarks/retrieval.py)
EXACT_MAX = 20_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
EF_SEARCH_STEPS = (16, 32, 64, 128, 256, 512, 1024)
#: noise added to the recall-sample queries: a vector of this norm moves a unit vector to cosine ~0.9
QUERY_NOISE_NORM = 0.45


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is in the `query` extra
        raise ImportError("the vector index needs faiss-cpu: pip install 'harmoview-toolkit[query]'") from exc
    return faiss


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean share of each query's exact top-``k`` ids found in its approximate top-``k``."""
    hits = [len(set(a[:k].tolist()) & set(e[:k].tolist()) - {-1}) for a, e in zip(approx, exact, strict=True)]
    denom = [max(min(k, int((e[:k] >= 0).sum())), 1) for e in exact]
    return float(np.mean(np.array(hits) / np.array(denom))) if len(hits) else 1.0


@dataclass
class VectorIndex:
    """A FAISS index and what is known about it (``meta``: kind, n, dim, recall@10, efSearch, build_s)."""

    index: object
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``flat`` (exact) or ``hnsw`` (approximate)."""
        return self.meta["kind"]

    @property
    def ntotal(self) -> int:
        """How many vectors the index holds."""
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(sims, ids)`` each ``(Q, k)``, best first; missing slots are ``-inf`` / ``-1``."""
        q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        k_eff = min(k, self.ntotal)
        sims = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        if k_eff == 0 or len(q) == 0:
            return sims, ids
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(int(self.meta.get("ef_search", 64)), k_eff)
        s, i = self.index.search(q, k_eff)
        s[i < 0] = -np.inf
        sims[:, :k_eff], ids[:, :k_eff] = s, i
        return sims, ids

    def save(self, folder: Path) -> None:
        """Write ``vectors.faiss`` and ``meta.json`` into ``folder``."""
        _faiss().write_index(self.index, str(folder / "vectors.faiss"))
        (folder / "meta.json").write_text(json.dumps(self.meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> VectorIndex:
        """The index that :meth:`save` wrote into ``folder``."""
        meta = json.loads((folder / "meta.json").read_text())
        return cls(_faiss().read_index(str(folder / "vectors.faiss")), meta)


def _recall_queries(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = x[rng.choice(len(x), size=min(n, len(x)), replace=False)]
    noise = rng.standard_normal(rows.shape).astype(np.float32)
    noise *= QUERY_NOISE_NORM / np.linalg.norm(noise, axis=1, keepdims=True)
    q = rows + noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def build_vector_index(
    vectors: np.ndarray,
    *,
    exact_max: int = EXACT_MAX,
    target_recall: float = 0.99,
    recall_queries: int = 200,
    hnsw_m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    seed: int = 0,
) -> VectorIndex:
    """An index over ``vectors`` (``(N, D)`` float32, L2-normalised rows): exact up to ``exact_max`` rows,
    else HNSW with ``efSearch`` tuned for ``target_recall`` (recall@10 vs exact, measured and stored)."""
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, np.float32)
    n, dim = x.shape
    t0 = time.perf_counter()
    meta = {"format": INDEX_FORMAT, "n": int(n), "dim": int(dim), "metric": "inner_product", "faiss": faiss.__version__}
    if n <= exact_max:
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        meta.update(kind="flat", recall_at_10=1.0, recall_note="exact search", build_s=time.perf_counter() - t0)
        return VectorIndex(index, meta)
    index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(x)
    build_s = time.perf_counter() - t0
    # Recall on a sample of queries, against exact search over the same vectors.
    q = _recall_queries(x, recall_queries, seed)
    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    _, truth = exact.search(q, 10)
    del exact
    chosen, recall = EF_SEARCH_STEPS[-1], 0.0
    for ef in EF_SEARCH_STEPS:
        index.hnsw.efSearch = ef
        _, found = index.search(q, 10)
        recall = recall_at_k(found, truth, 10)
        if recall >= target_recall:
            chosen = ef
            break
    index.hnsw.efSearch = chosen
    meta.update(
        kind="hnsw",
        hnsw_m=hnsw_m,
        ef_construction=ef_construction,
        ef_search=chosen,
        recall_at_10=round(recall, 4),
        recall_target=target_recall,
        recall_target_met=recall >= target_recall,
        recall_queries=len(q),
        build_s=round(build_s, 3),
        tune_s=round(time.perf_counter() - t0 - build_s, 3),
    )
    return VectorIndex(index, meta)


def load_or_build(
    folder: str | Path,
    key: str,
    build: Callable[[Path], VectorIndex],
    *,
    persist: bool = True,
    force: bool = False,
) -> tuple[VectorIndex, Path, bool]:
    """The index stored in ``folder`` when its ``meta["key"] == key``, else a fresh one from ``build``.

    ``build(tmp_folder)`` returns the index and may write side files (a rows table) into ``tmp_folder``;
    the whole folder is then swapped in. Returns ``(index, folder holding its files, rebuilt?)``. With
    ``persist=False`` or an unwritable parent the index lives in a temporary folder only (caller cleans).
    ``force=True`` rebuilds even when the stored key matches.
    """
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if meta_path.is_file() and not force:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("key") == key and meta.get("format") == INDEX_FORMAT:
            return VectorIndex.load(folder), folder, False
    parent = folder.parent
    writable = persist and os.access(parent, os.W_OK)
    if writable:
        tmp = staging_folder(folder)  # datakit's temporary name: a killed query leaves what a build may clean
    else:
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="datakit-index-"))
    index = build(tmp)
    index.meta["key"] = key
    index.save(tmp)
    if not writable:
        return index, tmp, True
    swap_folder(tmp, folder)
    return index, folder, True
