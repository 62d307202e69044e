"""Global pass: link tracks into identities (people), and summarise each identity.

Pure functions over pyarrow Tables (the caller reads and writes the Parquet). The method, in steps:

1. **kNN graph.** Every track with an embedding gets its ``k`` most similar tracks by cosine (exact:
   faiss ``IndexFlatIP`` when importable, else blockwise numpy top-k, never a matrix larger than one
   block), and an edge is kept where cosine >= ``same_person_cosine``.
2. **Cannot-link.** Two tracks of the same clip that overlap in time were on screen together, so they
   are different people. Track times are the times of their first and last faces, so touching
   intervals (one ends at the frame where the other starts) count as overlapping. This is a hard
   constraint: no identity ever contains such a pair (not only "the edge is dropped").
3. **Clustering that does not chain.** Edges are visited from the most to the least similar (ties by
   track order) and join two clusters only when the *average* cosine over all pairs of tracks across
   the two clusters is >= ``linkage_cosine`` (default ``same_person_cosine``), computed exactly in
   O(D) from per-cluster sums of unit vectors. So a bridge track B with A~B and B~C does not merge A
   and C when A and C are far apart: once B has joined A, the average across {A, B} and {C} falls
   below the threshold. This is thresholded average-linkage agglomeration restricted to kNN edges.

   Why not Chinese Whispers: on a sparse kNN graph it chains (on the path A-B-C every node ends up
   with one label), it is order-dependent label propagation with no convergence guarantee, and
   cannot-link can only drop edges, not keep two people apart. The merge order here is fixed by the
   similarities and the track ids, so the result is deterministic and independent of the input row
   order; union-find makes it near-linear in the number of edges.
4. **Within a video, then across videos.** Step 1 runs per video first (each track's ``k`` neighbours
   among its own video's tracks), then over one point per video-level cluster (its normalised
   centroid) across the whole run, with the same guarded merge. One global graph is *not* equivalent:
   a person with hundreds of tracks in one video fills every track's ``k`` neighbour slots with that
   same video, leaving no edge to their other videos; a video-level cluster is one point and finds its
   neighbours elsewhere. The average-linkage guard of the second step still counts every track.

0. **Consolidated groups first.** ``groups`` (from :mod:`datakit.passes.consolidate`: one person's track
   pieces within a video, joined across length splits and by set-to-set similarity) start as one cluster
   each, with their cannot-link partners pooled; steps 1-4 then work on them, so a group links across
   videos by the pooled embedding of all its tracks.

Tracks with a null (or non-finite, or zero) embedding are singleton identities (unless a group holds
them). An identity id is ``"id_" + sha1(min member track_id)[:16]``: stable across re-runs of the same footage.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.schema import PIPELINE_VERSION, VIEWS, identities_schema, tracks_schema

__all__ = [
    "build_identities",
    "cannot_link_pairs",
    "embeddings_to_numpy",
    "identity_id_for",
    "knn_inner_product",
    "link_identities",
]


def identity_id_for(min_track_id: str) -> str:
    """The stable id of the identity whose smallest member track id is ``min_track_id``."""
    return "id_" + hashlib.sha1(min_track_id.encode("utf-8")).hexdigest()[:16]


def embeddings_to_numpy(column: pa.ChunkedArray | pa.Array, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """An embedding column as ``(N, dim)`` float32 L2-normalised rows and a validity mask.

    Rows that are null, non-finite or zero are invalid and left as zeros.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    out = np.zeros((n, dim), np.float32)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
    if valid.any():
        # flatten() on a null-free FixedSizeList respects slicing offsets; inner nulls become NaN.
        values = arr.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
        out[valid] = np.asarray(values, np.float32).reshape(-1, dim)
    norms = np.linalg.norm(out, axis=1)
    valid &= np.isfinite(norms) & (norms > 1e-12)
    out[~valid] = 0.0
    out[valid] /= norms[valid, None]
    return out, valid


def knn_inner_product(
    x: np.ndarray, k: int, *, backend: str = "auto", query_block: int = 1024, db_block: int = 16384
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product neighbours of every row of ``x`` among the *other* rows.

    Returns ``(sims, idx)``, both ``(N, k)``, best first; slots beyond ``N - 1`` neighbours hold
    ``-inf`` / ``-1``. ``backend``: ``"faiss"`` (IndexFlatIP), ``"numpy"`` (blockwise: at most a
    ``query_block x db_block`` similarity matrix at a time) or ``"auto"`` (faiss when importable and ``N > 4096``).
    """
    x = np.ascontiguousarray(x, np.float32)
    n = x.shape[0]
    k_eff = max(min(k, n - 1), 0)
    sims = np.full((n, k), -np.inf, np.float32)
    idx = np.full((n, k), -1, np.int64)
    if k_eff == 0:
        return sims, idx
    if backend == "auto" and n <= 4096:
        backend = "numpy"  # one block; faiss's per-call threading overhead dominates on small inputs
    if backend == "auto":
        try:
            import faiss  # noqa: F401
        except ImportError:
            backend = "numpy"
        else:
            backend = "faiss"
    if backend == "faiss":
        s, i = _knn_faiss(x, k_eff)
    elif backend == "numpy":
        s, i = _knn_numpy(x, k_eff, query_block, db_block)
    else:
        raise ValueError(f"unknown kNN backend {backend!r}")
    sims[:, :k_eff], idx[:, :k_eff] = s, i
    return sims, idx


def _knn_faiss(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    s, i = index.search(x, k + 1)  # one extra slot for the row itself
    is_self = i == np.arange(x.shape[0])[:, None]
    # Drop the row itself; with exact duplicates it may be missing from the k+1, then drop the last.
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return s[keep].reshape(-1, k), i[keep].reshape(-1, k).astype(np.int64)


def _knn_numpy(x: np.ndarray, k: int, query_block: int, db_block: int) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    out_s = np.empty((n, k), np.float32)
    out_i = np.empty((n, k), np.int64)
    for q0 in range(0, n, query_block):
        q = x[q0 : q0 + query_block]  # (Q, D)
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.full((len(q), 0), -1, np.int64)
        for d0 in range(0, n, db_block):
            block = q @ x[d0 : d0 + db_block].T  # (Q, B): the only similarity matrix ever held
            rows = np.arange(len(q))
            own = rows + q0 - d0  # the query's own column in this block, if it falls inside
            inside = (own >= 0) & (own < block.shape[1])
            block[rows[inside], own[inside]] = -np.inf
            cand_s = np.concatenate([best_s, block], axis=1)
            cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(d0, d0 + block.shape[1]), block.shape)], 1)
            top = min(k, cand_s.shape[1])
            part = np.argpartition(-cand_s, top - 1, axis=1)[:, :top]
            best_s = np.take_along_axis(cand_s, part, 1)
            best_i = np.take_along_axis(cand_i, part, 1)
        order = np.lexsort((best_i, -best_s), axis=1)  # best first, ties by index
        out_s[q0 : q0 + len(q)] = np.take_along_axis(best_s, order, 1)
        out_i[q0 : q0 + len(q)] = np.take_along_axis(best_i, order, 1)
    return out_s, out_i


class _Clusters:
    """Union-find over tracks with per-cluster embedding sums, sizes and cannot-link partners."""

    def __init__(self, emb: np.ndarray, cannot_link: dict[int, set[int]]) -> None:
        self.parent = list(range(len(emb)))  # plain lists: the loop below is scalar Python
        self.size = [1] * len(emb)
        self.sums = emb.astype(np.float64)  # (N, D) sum of the members' unit vectors, at each root
        self.forbid = cannot_link  # root -> tracks that may never join it

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    def linked(self, a: int, b: int) -> bool:
        """Whether the clusters rooted at ``a`` and ``b`` contain a cannot-link pair."""
        fa, fb = self.forbid.get(a, ()), self.forbid.get(b, ())
        small, other = (fa, b) if len(fa) <= len(fb) else (fb, a)
        return any(self.find(t) == other for t in small)

    def merge_along(self, a: np.ndarray, b: np.ndarray, linkage_cosine: float) -> None:
        """Visit edges ``(a[e], b[e])`` in order; join their clusters if the average-linkage guard and
        the cannot-link constraint allow it."""
        for i, j in zip(a.tolist(), b.tolist(), strict=True):
            ri, rj = self.find(i), self.find(j)
            if ri == rj:
                continue
            mean_cos = float(self.sums[ri] @ self.sums[rj]) / (self.size[ri] * self.size[rj])
            if mean_cos < linkage_cosine or self.linked(ri, rj):
                continue
            self._union(ri, rj)

    def join_groups(self, groups: np.ndarray) -> None:
        """Start rows with equal ``groups`` values as one cluster (cannot-link is the caller's job)."""
        first: dict[int, int] = {}
        for i, g in enumerate(groups.tolist()):
            if g not in first:
                first[g] = i
                continue
            ri, rj = self.find(first[g]), self.find(i)
            if ri != rj:
                self._union(ri, rj)

    def _union(self, ri: int, rj: int) -> None:
        if self.size[ri] < self.size[rj]:
            ri, rj = rj, ri
        self.parent[rj] = ri
        self.size[ri] += self.size[rj]
        self.sums[ri] += self.sums[rj]
        if rj in self.forbid:
            self.forbid.setdefault(ri, set()).update(self.forbid.pop(rj))

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], np.int64)


def cannot_link_pairs(clip: np.ndarray, start_s: np.ndarray, end_s: np.ndarray) -> dict[int, set[int]]:
    """Pairs of tracks of one clip whose time ranges overlap (touching counts), as adjacency sets.

    Sorted by (clip, start), track i overlaps the next ones while their start <= its end; once a
    track at offset d starts after i ends, every later one does too, so the sweep stops at the
    deepest overlap rather than comparing all pairs of a clip.
    """
    order = np.lexsort((start_s, clip))
    c, s, e = clip[order], start_s[order], end_s[order]
    pairs: dict[int, set[int]] = {}
    for d in range(1, len(order)):
        hit = (c[d:] == c[:-d]) & (s[d:] <= e[:-d])
        if not hit.any():
            break
        for i, j in zip(order[:-d][hit].tolist(), order[d:][hit].tolist(), strict=True):
            pairs.setdefault(i, set()).add(j)
            pairs.setdefault(j, set()).add(i)
    return pairs


def _edges(x: np.ndarray, members: np.ndarray, k: int, min_cosine: float) -> tuple[np.ndarray, ...]:
    """kNN edges among ``x`` (rows are the points ``members``) with cosine >= ``min_cosine``."""
    sims, idx = knn_inner_product(x, k)
    rows = np.repeat(np.arange(len(x)), sims.shape[1])
    keep = (idx.ravel() >= 0) & (sims.ravel() >= min_cosine)
    a, b = rows[keep], idx.ravel()[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pair = np.unique(lo * len(x) + hi)
    lo, hi = pair // len(x), pair % len(x)
    # Recompute similarities the same way for both directions and backends, so the order is exact.
    sim = np.einsum("ij,ij->i", x[lo], x[hi])
    return members[lo], members[hi], sim


def _sorted_edges(a: list[np.ndarray], b: list[np.ndarray], s: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    a_all, b_all, s_all = (np.concatenate(v) if v else np.zeros(0) for v in (a, b, s))
    order = np.lexsort((b_all, a_all, -s_all))  # most similar first, ties by track order
    return a_all[order].astype(np.int64), b_all[order].astype(np.int64)


def _within_video_edges(
    emb: np.ndarray, embedded: np.ndarray, video: np.ndarray, k: int, min_cosine: float
) -> tuple[np.ndarray, ...]:
    """kNN edges of the ``embedded`` rows among their own video's rows, most similar first."""
    by_video = embedded[np.argsort(video[embedded], kind="stable")]
    cuts = np.flatnonzero(np.diff(video[by_video])) + 1
    edges: tuple[list, list, list] = ([], [], [])
    for members in np.split(by_video, cuts):
        if len(members) > 1:
            for part, arr in zip(edges, _edges(emb[members], members, k, min_cosine), strict=True):
                part.append(arr)
    return _sorted_edges(*edges)


def _codes(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Integer codes of a string column (equal strings, equal codes)."""
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return np.asarray(encoded.indices.to_numpy(zero_copy_only=False), np.int64)


def link_identities(
    tracks: pa.Table,
    *,
    same_person_cosine: float,
    k: int = 16,
    linkage_cosine: float | None = None,
    groups: np.ndarray | None = None,
) -> pa.Table:
    """``tracks`` (schema ``tracks_schema(dim)``) with ``identity_id`` filled for every track.

    ``same_person_cosine`` keeps kNN edges; ``linkage_cosine`` (default: the same) is the least average
    cosine across two clusters for them to merge. ``groups``: an integer per row of ``tracks``; rows with
    equal values start as one cluster (the within-video consolidation of :mod:`datakit.passes.consolidate`,
    which already respects the cannot-link constraint). See the module docstring for the method.
    """
    dim = tracks.schema.field("embedding").type.list_size
    schema = tracks_schema(dim)
    n = tracks.num_rows
    if n == 0:
        return tracks.select(schema.names).cast(schema)
    linkage_cosine = same_person_cosine if linkage_cosine is None else linkage_cosine
    # Work in track_id order so that nothing depends on the input row order.
    by_id = pc.sort_indices(tracks, [("track_id", "ascending")])
    t = tracks.take(by_id)
    track_ids = t.column("track_id").to_pylist()
    emb, valid = embeddings_to_numpy(t.column("embedding"), dim)
    clusters = _Clusters(
        emb,
        cannot_link_pairs(
            _codes(t.column("clip_id")),
            t.column("start_s").to_numpy().astype(np.float64),
            t.column("end_s").to_numpy().astype(np.float64),
        ),
    )
    if groups is not None:
        clusters.join_groups(np.asarray(groups)[by_id.to_numpy()])

    # 1. Within each video.
    embedded = np.flatnonzero(valid)
    edges = _within_video_edges(emb, embedded, _codes(t.column("video_id")), k, same_person_cosine)
    clusters.merge_along(*edges, linkage_cosine)

    # 2. Across videos: one point per video-level cluster (its normalised centroid).
    if len(embedded) > 1:
        groups = np.unique(clusters.roots()[embedded])
        cent = clusters.sums[groups]
        cent = (cent / np.linalg.norm(cent, axis=1, keepdims=True)).astype(np.float32)
        a, b, s = _edges(cent, groups, k, same_person_cosine)
        clusters.merge_along(*_sorted_edges([a], [b], [s]), linkage_cosine)

    # 3. Ids: the smallest member index is the smallest track id (rows are in track_id order).
    roots = clusters.roots()
    smallest = np.full(n, n, np.int64)
    np.minimum.at(smallest, roots, np.arange(n))
    ids_sorted = [identity_id_for(track_ids[m]) for m in smallest[roots].tolist()]
    ids = np.empty(n, object)
    ids[by_id.to_numpy()] = ids_sorted  # back to the input row order
    out = tracks.set_column(
        tracks.schema.get_field_index("identity_id"), "identity_id", pa.array(ids.tolist(), pa.string())
    )
    return out.select(schema.names).cast(schema)


def build_identities(tracks: pa.Table, faces: pa.Table, dim: int) -> pa.Table:
    """One row per identity (schema ``identities_schema(dim)``), from linked ``tracks`` and ``faces``.

    Counts cover the member tracks and their faces; ``views`` are the view bins seen in the member
    tracks or faces, in ``VIEWS`` order; ``video_ids`` are sorted; ``centroid`` is the normalised mean
    of the member track embeddings (null when no member has one). Rows are sorted by identity_id.
    """
    schema = identities_schema(dim)
    if tracks.num_rows == 0:
        return schema.empty_table()
    if tracks.column("identity_id").null_count:
        raise ValueError("build_identities needs every track linked (run link_identities first)")
    ident = tracks.column("identity_id").to_pylist()
    names = sorted(set(ident))
    row_of = {name: i for i, name in enumerate(names)}
    code = np.array([row_of[x] for x in ident], np.int64)
    m = len(names)

    tracks_per = np.bincount(code, minlength=m)
    clips, videos = [set() for _ in range(m)], [set() for _ in range(m)]
    views: list[set[str]] = [set() for _ in range(m)]
    cols = (tracks.column(c).to_pylist() for c in ("clip_id", "video_id", "views"))
    for c, clip, video, track_views in zip(code.tolist(), *cols, strict=True):
        clips[c].add(clip)
        videos[c].add(video)
        views[c].update(v for v in track_views or () if v)

    # Faces: counted through their track's identity.
    track_code = dict(zip(tracks.column("track_id").to_pylist(), code.tolist(), strict=True))
    faces_per = np.zeros(m, np.int64)
    for track_id, view in zip(faces.column("track_id").to_pylist(), faces.column("view").to_pylist(), strict=True):
        c = track_code.get(track_id)
        if c is not None:
            faces_per[c] += 1
            if view:
                views[c].add(view)

    emb, valid = embeddings_to_numpy(tracks.column("embedding"), dim)
    sums = np.zeros((m, dim), np.float64)
    np.add.at(sums, code[valid], emb[valid])
    norms = np.linalg.norm(sums, axis=1)
    centroids = [
        (row / nrm).astype(np.float32).tolist() if nrm > 1e-12 else None for row, nrm in zip(sums, norms, strict=True)
    ]
    view_rank = {v: i for i, v in enumerate(VIEWS)}
    return pa.table(
        {
            "identity_id": names,
            "num_tracks": tracks_per.astype(np.int32),
            "num_clips": np.array([len(s) for s in clips], np.int32),
            "num_videos": np.array([len(s) for s in videos], np.int32),
            "num_faces": faces_per.astype(np.int32),
            "views": [sorted(s, key=lambda v: (view_rank.get(v, len(VIEWS)), v)) for s in views],
            "video_ids": [sorted(s) for s in videos],
            "centroid": pa.array(centroids, schema.field("centroid").type),
            "pipeline_version": [PIPELINE_VERSION] * m,
        }
    ).cast(schema)
