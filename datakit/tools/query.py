"""Identity retrieval over manifests: who in these runs looks like this photo / embedding / identity?

Python API::

    from datakit.tools.query import answer_queries, make_queries, open_index, search_photo
    index = open_index(["runs/a", "runs/b"])          # builds or reuses <run>/_index/ per run
    matches = index.search(embedding, k=10)            # min_score defaults to the embedder's threshold
    matches = search_photo(index, "obama.jpg")         # each face of the photo, with the runs' face stack
    results = answer_queries(index, make_queries(index, identity="id_..."), k=5)   # what `datakit query` runs

What is searched: per run, one vector per identity (its ``centroid``) and one per embedded track (its
``embedding``), so a face that fell outside every identity (a track dropped by a gate, whose
``identity_id`` is null) is still found and reported with its track. A match is one identity (score =
the best of its centroid and its member tracks) or one such unlinked track. Per run the vectors live in
a :class:`datakit.tools.index.VectorIndex` (exact for small runs, HNSW for large ones, recall measured at
build time) persisted in ``<run>/_index/`` and keyed by the identities/tracks Parquet files (names,
sizes, mtimes) and the pipeline version: rebuilt when they change, reused otherwise. Clips are joined
with pyarrow datasets filtered to the matched ids only (tracks -> clips -> videos), never by reading
whole tables into Python objects.

Several runs can be searched together when they share one embedder (name and dimension); runs built
with different embedders live in different embedding spaces and are refused. A photo is embedded with
the face stack recorded in the first run's ``run.json`` (backend, models folder, insightface pack),
checked against the recorded stack name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datakit.passes.identities import embeddings_to_numpy
from datakit.store import RunDir
from datakit.tools.index import EXACT_MAX, INDEX_FORMAT, VectorIndex, build_vector_index, load_or_build
from datakit.tools.matches import ClipRef, Match, attach_clips, group_hits

if TYPE_CHECKING:
    from datakit.faces import FaceStack
    from datakit.tools.photos import PhotoFace

__all__ = [
    "ClipRef",
    "Index",
    "ManifestRun",
    "Match",
    "Query",
    "QueryError",
    "QueryResult",
    "answer_queries",
    "embedding_file_queries",
    "face_stack_for",
    "make_queries",
    "open_index",
    "search_photo",
]

INDEX_DIR = "_index"
ROWS = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # identity | track
        pa.field("identity_id", pa.string()),  # null for a track outside every identity
        pa.field("track_id", pa.string()),  # null for an identity row
    ]
)


class QueryError(ValueError):
    """A query that cannot run (no such run, mixed embedders, unknown identity...); the message says why."""


@dataclass(slots=True)
class ManifestRun:
    """A run directory and what its run.json says about the embedding space."""

    dir: RunDir
    record: dict

    @classmethod
    def open(cls, root: str | Path) -> ManifestRun:
        """The run in ``root`` (:class:`datakit.store.NotARunError` if it is none), which must record a face stack."""
        run = RunDir.open(root)
        record = run.record()
        if not record.get("face_stack"):
            raise QueryError(f"{run.record_path} records no face stack")
        return cls(run, record)

    @property
    def root(self) -> Path:
        """The run folder."""
        return self.dir.root

    @property
    def face_stack(self) -> dict:
        """The face stack run.json records (name, embedder, embedding_dim, same_person_cosine, ...)."""
        return self.record["face_stack"]

    @property
    def embedder(self) -> tuple[str, int]:
        """(embedder name, embedding dimension): runs can be searched together only when these agree."""
        return self.face_stack.get("embedder", "?"), int(self.face_stack.get("embedding_dim", 0))

    @property
    def same_person_cosine(self) -> float:
        """The embedder's calibrated same-person threshold, as the run used it."""
        return float(self.face_stack["same_person_cosine"])

    def content_key(self) -> str:
        """Digest of what the index is built from: pipeline version and the identities/tracks files."""
        h = hashlib.sha1()
        h.update(f"{INDEX_FORMAT}|{self.record.get('pipeline_version')}|{self.embedder}".encode())
        for table in ("identities", "tracks"):
            for p in self.dir.files(table):
                st = p.stat()
                h.update(f"|{table}/{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()


@dataclass
class _RunIndex:
    """One run's searchable vectors and, per vector, which identity or track it is."""

    run: ManifestRun
    vectors: VectorIndex
    rows: pa.Table  # ROWS, one per vector
    folder: Path
    rebuilt: bool


def _index_vectors(run: ManifestRun, dim: int) -> tuple[np.ndarray, pa.Table]:
    """The vectors of one run (identity centroids, then track embeddings) and their rows."""
    parts, rows = [], []
    ident = run.dir.dataset("identities")
    if ident is not None:
        t = ident.to_table(columns=["identity_id", "centroid"])
        x, valid = embeddings_to_numpy(t.column("centroid"), dim)
        keep = pa.array(valid)
        ids = t.column("identity_id").filter(keep)
        parts.append(x[valid])
        rows.append(
            pa.table(
                {
                    "kind": pa.array(["identity"] * len(ids)),
                    "identity_id": ids,
                    "track_id": pa.nulls(len(ids), pa.string()),
                },
                schema=ROWS,
            )
        )
    tracks = run.dir.dataset("tracks")
    if tracks is not None:
        t = tracks.to_table(columns=["track_id", "identity_id", "embedding"])
        x, valid = embeddings_to_numpy(t.column("embedding"), dim)
        keep = pa.array(valid)
        parts.append(x[valid])
        rows.append(
            pa.table(
                {
                    "kind": pa.array(["track"] * int(valid.sum())),
                    "identity_id": t.column("identity_id").filter(keep),
                    "track_id": t.column("track_id").filter(keep),
                },
                schema=ROWS,
            )
        )
    x = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return x, (pa.concat_tables(rows) if rows else ROWS.empty_table())


def _open_run_index(run: ManifestRun, *, rebuild: bool, persist: bool, exact_max: int) -> _RunIndex:
    dim = run.embedder[1]
    key = run.content_key()

    def build(folder: Path) -> VectorIndex:
        x, rows = _index_vectors(run, dim)
        pq.write_table(rows, folder / "rows.parquet")
        index = build_vector_index(x, exact_max=exact_max)
        index.meta.update(run=str(run.root), embedder=run.embedder[0])
        return index

    index, where, rebuilt = load_or_build(run.root / INDEX_DIR, key, build, persist=persist, force=rebuild)
    rows = pq.read_table(where / "rows.parquet").cast(ROWS)
    return _RunIndex(run, index, rows, where, rebuilt)


class Index:
    """The searchable vectors of one or more runs that share an embedder. Made by :func:`open_index`."""

    def __init__(self, parts: list[_RunIndex]) -> None:
        self.parts = parts
        self.embedder, self.dim = parts[0].run.embedder
        self.same_person_cosine = parts[0].run.same_person_cosine

    @property
    def runs(self) -> list[ManifestRun]:
        """The searched runs, in the order given."""
        return [p.run for p in self.parts]

    def describe(self) -> list[dict]:
        """Per run: index kind, size, recall@10 measured at build, whether it was (re)built now."""
        out = []
        for p in self.parts:
            meta = p.vectors.meta
            out.append(
                {
                    "run": str(p.run.root),
                    "kind": meta.get("kind"),
                    "n": meta.get("n"),
                    "recall_at_10": meta.get("recall_at_10"),
                    "rebuilt": p.rebuilt,
                    "folder": str(p.folder),
                }
            )
        return out

    # -- queries -------------------------------------------------------------------------------------

    def identity_embedding(self, identity_id: str) -> np.ndarray:
        """The centroid of ``identity_id`` (from the first run holding it)."""
        for part in self.parts:
            dset = part.run.dir.dataset("identities")
            if dset is None:
                continue
            t = dset.to_table(columns=["identity_id", "centroid"], filter=pc.field("identity_id") == identity_id)
            if t.num_rows:
                x, valid = embeddings_to_numpy(t.column("centroid"), self.dim)
                if not valid[0]:
                    raise QueryError(
                        f"identity {identity_id} has no embedding (none of its faces could be embedded: too small"
                        " or too turned for the embedder), so it cannot be searched by; see its clips with"
                        " `datakit report`"
                    )
                return x[0]
        runs = ", ".join(str(r.root) for r in self.runs)
        raise QueryError(f"no identity {identity_id} in {runs}")

    def search(self, embedding: np.ndarray, k: int = 10, min_score: float | None = None) -> list[Match]:
        """The ``k`` best matches of one embedding with score >= ``min_score`` (default: the embedder's
        ``same_person_cosine``), best first, each with its clips."""
        q = np.asarray(embedding, np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise QueryError(f"embedding has {q.shape[0]} values; the runs' embedder {self.embedder} gives {self.dim}")
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm < 1e-12:
            raise QueryError("embedding is zero or not finite")
        q = q / norm
        min_score = self.same_person_cosine if min_score is None else float(min_score)
        found: list[Match] = []
        for part in self.parts:
            found.extend(self._search_run(part, q, k, min_score))
        found.sort(key=lambda m: (-m.score, m.identity_id or "", m.track_id or ""))
        found = found[:k]
        for part in self.parts:
            mine = [m for m in found if m.run == str(part.run.root)]
            if mine:
                attach_clips(part.run.dir, mine)
        return found

    def best_score(self, embedding: np.ndarray) -> Match | None:
        """The single best match whatever its score (to say how far below the threshold a miss is)."""
        got = self.search(embedding, k=1, min_score=-1.0)
        return got[0] if got else None

    def _search_run(self, part: _RunIndex, q: np.ndarray, k: int, min_score: float) -> list[Match]:
        total = part.vectors.ntotal
        if total == 0:
            return []
        k_search = min(total, max(4 * k, 32))
        while True:
            sims, ids = part.vectors.search(q[None], k_search)
            sims, ids = sims[0], ids[0]
            ok = ids >= 0
            sims, ids = sims[ok], ids[ok]
            groups = group_hits(part.rows, ids, sims)
            enough = sum(1 for g in groups.values() if g[0] >= min_score) >= k
            if enough or k_search >= total or (len(sims) and sims[-1] < min_score):
                break
            k_search = min(total, k_search * 4)  # one identity's many tracks filled the slots: look further
        out = []
        for (kind, key), (score, track_id) in groups.items():
            if score < min_score:
                continue
            out.append(
                Match(
                    identity_id=key if kind == "identity" else None,
                    score=score,
                    run=str(part.run.root),
                    kind=kind,
                    track_id=track_id,
                )
            )
        return out


def open_index(
    manifests: str | Path | Sequence[str | Path],
    *,
    rebuild: bool = False,
    persist: bool = True,
    exact_max: int = EXACT_MAX,
) -> Index:
    """Open (building or reusing ``<run>/_index/``) the vector index of one or more runs.

    Raises :class:`QueryError` for a folder that is not a run or for runs with different embedders.
    ``persist=False`` keeps a fresh index out of the run folders (read-only manifests).
    """
    roots = [manifests] if isinstance(manifests, str | Path) else list(manifests)
    if not roots:
        raise QueryError("no manifest folder given")
    runs = [ManifestRun.open(r) for r in roots]
    embedders = {r.embedder for r in runs}
    if len(embedders) > 1:
        listing = "; ".join(f"{r.root}: {r.embedder[0]} ({r.embedder[1]}-d)" for r in runs)
        raise QueryError(
            f"the runs were built with different embedders, whose scores cannot be compared: {listing}."
            " Query them one embedder at a time."
        )
    return Index([_open_run_index(r, rebuild=rebuild, persist=persist, exact_max=exact_max) for r in runs])


def face_stack_for(
    index_or_runs: Index | Sequence[ManifestRun],
    *,
    models_dir: str | Path | None = None,
    insightface_pack: str | Path | None = None,
) -> FaceStack:
    """The face stack that built the runs, loaded from what run.json records (backend, models folder,
    insightface pack, detector threshold), with ``models_dir`` / ``insightface_pack`` overriding it.

    Raises :class:`QueryError` when the stack that loads here is not the recorded one (e.g. its model
    folder is missing, so ``auto`` would fall back to another detector)."""
    from datakit.faces import build_face_stack

    runs = index_or_runs.runs if isinstance(index_or_runs, Index) else list(index_or_runs)
    run = runs[0]
    cfg = run.record.get("config") or {}
    recorded = run.face_stack.get("name")

    def existing(value, base: Path) -> Path | None:
        if not value:
            return None
        p = Path(value)
        for cand in (p, base / p) if not p.is_absolute() else (p,):
            if cand.exists():
                return cand
        return None

    mdir = Path(models_dir) if models_dir else existing(cfg.get("models_dir"), run.root.parent)
    pack = Path(insightface_pack) if insightface_pack else existing(cfg.get("insightface_pack"), run.root.parent)
    backend = cfg.get("backend") or "auto"
    kwargs = {"det_threshold": cfg.get("det_threshold")}
    if cfg.get("detect_max_side") is not None:
        kwargs["detect_max_side"] = int(cfg["detect_max_side"])
    try:
        stack = build_face_stack(backend, models_dir=mdir, insightface_pack=pack, **kwargs)
    except Exception as exc:  # ModelNotFoundError and friends: say which run wanted what
        raise QueryError(f"cannot load the face stack {recorded!r} that built {run.root}: {exc}") from exc
    if recorded and stack.name != recorded:
        raise QueryError(
            f"{run.root} was built with face stack {recorded!r} but {stack.name!r} loads here"
            f" (recorded models folder: {cfg.get('models_dir')!r}); pass --models-dir (or set DATAKIT_MODELS_DIR)"
            " / --insightface-pack so that photos are embedded as the manifests were"
        )
    if (stack.embedder.name, stack.embedder.dim) != run.embedder:
        raise QueryError(f"embedder {stack.embedder.name} loaded, but {run.root} was embedded with {run.embedder[0]}")
    return stack


def embed_query_photo(
    index: Index, photo: str | Path, *, face: int | None = None, stack: FaceStack | None = None, **stack_kwargs
) -> list[PhotoFace]:
    """The faces of ``photo`` embedded with the runs' face stack (all faces, or only ``face``)."""
    from datakit.tools.photos import embed_photo

    stack = stack or face_stack_for(index, **stack_kwargs)
    return embed_photo(photo, stack, face=face)


#: one query: what it is (JSON-able: {image, face, ...} | {identity_id} | {embedding, row}) and its
#: embedding (None for a face of a photo that the embedder could not embed)
Query = tuple[dict, np.ndarray | None]


@dataclass(slots=True)
class QueryResult:
    """One query and what it found."""

    query: dict  # what was asked (the ``Query`` description); also each match's ``query``
    matches: list[Match]  # score >= min_score, best first
    best: Match | None = None  # no match: the best candidate below min_score (how far off the miss is)
    problem: str | None = None  # why the query could not run (a face the embedder could not embed)


def make_queries(
    index: Index,
    *,
    image: str | Path | None = None,
    identity: str | None = None,
    embedding: str | Path | None = None,
    face: int | None = None,
    stack: FaceStack | None = None,
    **stack_kwargs,
) -> list[Query]:
    """The queries of exactly one of: every face of photo ``image`` (or face ``face``, 0 = leftmost, embedded
    with the runs' face stack; ``stack_kwargs`` as for :func:`face_stack_for`), the centroid of identity
    ``identity``, or each row of the ``.npy`` file ``embedding``."""
    if sum(x is not None for x in (image, identity, embedding)) != 1:
        raise QueryError("give exactly one of image, identity, embedding")
    if image is not None:
        faces = embed_query_photo(index, image, face=face, stack=stack, **stack_kwargs)
        return [(pf.describe(), pf.embedding) for pf in faces]
    if identity is not None:
        return [({"identity_id": identity}, index.identity_embedding(identity))]
    return embedding_file_queries(embedding)


def embedding_file_queries(path: str | Path) -> list[Query]:
    """One query per row of a ``.npy`` file holding one ``(D,)`` embedding or ``(N, D)`` embeddings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {path} does not exist")
    arr = np.atleast_2d(np.asarray(np.load(path, allow_pickle=False), np.float32))
    if arr.ndim != 2:
        raise QueryError(f"{path}: expected a (D,) or (N, D) array, got shape {arr.shape}")
    return [({"embedding": str(path), "row": i}, row) for i, row in enumerate(arr)]


def answer_queries(
    index: Index, queries: Sequence[Query], *, k: int = 10, min_score: float | None = None
) -> list[QueryResult]:
    """Search each query: its ``k`` best matches with score >= ``min_score`` (default: the embedder's
    ``same_person_cosine``), each match's ``query`` set; a query without a match gets its best candidate."""
    if k < 1:
        raise QueryError("k must be at least 1")
    results = []
    for desc, emb in queries:
        if emb is None:
            results.append(QueryResult(desc, [], problem="the embedder could not embed this face"))
            continue
        got = index.search(emb, k=k, min_score=min_score)
        for m in got:
            m.query = desc
        results.append(QueryResult(desc, got, best=None if got else index.best_score(emb)))
    return results


def search_photo(
    index: Index,
    photo: str | Path,
    *,
    k: int = 10,
    min_score: float | None = None,
    face: int | None = None,
    stack: FaceStack | None = None,
    **stack_kwargs,
) -> list[Match]:
    """Matches of every face of ``photo`` (or of face ``face``, 0 = leftmost), best first; each match's
    ``query`` says which face it answers. Raises :class:`datakit.tools.photos.NoFaceError` for a photo without
    a face. ``stack_kwargs``: ``models_dir`` / ``insightface_pack`` overrides for :func:`face_stack_for`."""
    queries = make_queries(index, image=photo, face=face, stack=stack, **stack_kwargs)
    results = answer_queries(index, [q for q in queries if q[1] is not None], k=k, min_score=min_score)
    out = [m for r in results for m in r.matches]
    out.sort(key=lambda m: (-m.score, m.query["face"] if m.query else 0))
    return out
