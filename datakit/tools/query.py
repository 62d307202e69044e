"""Identity retrieval over manifests: who in these runs looks like this photo / embedding / identity?

Python API::

    from datakit.tools.query import open_index, search_photo
    index = open_index(["runs/a", "runs/b"])          # builds or reuses <run>/_index/ per run
    matches = index.search(embedding, k=10)            # min_score defaults to the embedder's threshold
    matches = search_photo(index, "obama.jpg")         # each face of the photo, with the runs' face stack

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
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from datakit.passes.identities import embeddings_to_numpy
from datakit.tools.index import EXACT_MAX, INDEX_FORMAT, VectorIndex, build_vector_index, load_or_build

if TYPE_CHECKING:
    from datakit.faces import FaceStack
    from datakit.tools.photos import PhotoFace

__all__ = [
    "ClipRef",
    "Index",
    "ManifestRun",
    "Match",
    "QueryError",
    "face_stack_for",
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

    root: Path
    record: dict

    @classmethod
    def open(cls, root: str | Path) -> ManifestRun:
        root = Path(root)
        path = root / "run.json"
        if not path.is_file():
            raise QueryError(f"{root} is not a datakit run (no run.json); pass the --out folder of `datakit build`")
        record = json.loads(path.read_text())
        if not record.get("face_stack"):
            raise QueryError(f"{path} records no face stack")
        return cls(root, record)

    @property
    def face_stack(self) -> dict:
        return self.record["face_stack"]

    @property
    def embedder(self) -> tuple[str, int]:
        return self.face_stack.get("embedder", "?"), int(self.face_stack.get("embedding_dim", 0))

    @property
    def same_person_cosine(self) -> float:
        return float(self.face_stack["same_person_cosine"])

    def files(self, table: str) -> list[Path]:
        folder = self.root / table
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    def dataset(self, table: str) -> ds.Dataset | None:
        files = self.files(table)
        return ds.dataset([str(p) for p in files], format="parquet") if files else None

    def content_key(self) -> str:
        """Digest of what the index is built from: pipeline version and the identities/tracks files."""
        h = hashlib.sha1()
        h.update(f"{INDEX_FORMAT}|{self.record.get('pipeline_version')}|{self.embedder}".encode())
        for table in ("identities", "tracks"):
            for p in self.files(table):
                st = p.stat()
                h.update(f"|{table}/{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()


@dataclass(slots=True)
class ClipRef:
    """A clip in which a match appears."""

    clip_id: str
    video_id: str
    video_path: str  # relative to the run's source folder (run.json config.src)
    start_s: float
    end_s: float
    track_ids: list[str]
    caption: str | None = None
    drop_reason: str | None = None  # the clip filter that dropped the clip, if any

    def to_dict(self) -> dict:
        return {
            "clip_id": self.clip_id,
            "video_id": self.video_id,
            "video_path": self.video_path,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "track_ids": self.track_ids,
            "caption": self.caption,
            "drop_reason": self.drop_reason,
        }


@dataclass(slots=True)
class Match:
    """One identity (or one track outside every identity) that matches a query."""

    identity_id: str | None
    score: float
    run: str
    kind: str  # "identity", or "track" for a track outside every identity
    track_id: str | None  # the best-matching track (the track itself when kind == "track")
    num_clips: int = 0
    num_videos: int = 0
    views: list[str] = field(default_factory=list)
    clips: list[ClipRef] = field(default_factory=list)
    track_drop_reason: str | None = None
    query: dict | None = None

    def to_dict(self) -> dict:
        return {
            "identity_id": self.identity_id,
            "score": round(self.score, 4),
            "kind": self.kind,
            "track_id": self.track_id,
            "track_drop_reason": self.track_drop_reason,
            "run": self.run,
            "num_clips": self.num_clips,
            "num_videos": self.num_videos,
            "views": self.views,
            "clips": [c.to_dict() for c in self.clips],
            "query": self.query,
        }


@dataclass
class _RunIndex:
    run: ManifestRun
    vectors: VectorIndex
    rows: pa.Table  # ROWS, one per vector
    folder: Path
    rebuilt: bool


def _index_vectors(run: ManifestRun, dim: int) -> tuple[np.ndarray, pa.Table]:
    """The vectors of one run (identity centroids, then track embeddings) and their rows."""
    parts, rows = [], []
    ident = run.dataset("identities")
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
    tracks = run.dataset("tracks")
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
            dset = part.run.dataset("identities")
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
                _attach_clips(part.run, mine)
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
            groups = _group(part.rows, ids, sims)
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


def _group(rows: pa.Table, ids: np.ndarray, sims: np.ndarray) -> dict[tuple[str, str], tuple[float, str | None]]:
    """Hits grouped by identity (or by track for a track outside every identity): best score, best track."""
    hit = rows.take(pa.array(ids, pa.int64()))
    kinds = hit.column("kind").to_pylist()
    idents = hit.column("identity_id").to_pylist()
    tracks = hit.column("track_id").to_pylist()
    groups: dict[tuple[str, str], tuple[float, str | None]] = {}
    for kind, ident, track, s in zip(kinds, idents, tracks, sims.tolist(), strict=True):  # best first
        key = ("identity", ident) if ident is not None else ("track", track)
        best, best_track = groups.get(key, (s, None))
        if kind == "track" and best_track is None:
            best_track = track
        groups[key] = (max(best, s), best_track)
    return groups


def _attach_clips(run: ManifestRun, matches: list[Match]) -> None:
    """Fill clips, counts and views of ``matches`` with filtered pyarrow reads and joins."""
    ident_ids = [m.identity_id for m in matches if m.identity_id is not None]
    orphan_ids = [m.track_id for m in matches if m.identity_id is None and m.track_id]
    tracks_ds = run.dataset("tracks")
    if tracks_ds is None:
        return
    cond = None
    if ident_ids:
        cond = pc.field("identity_id").isin(ident_ids)
    if orphan_ids:
        c2 = pc.field("track_id").isin(orphan_ids)
        cond = c2 if cond is None else (cond | c2)
    tracks = tracks_ds.to_table(
        columns=["track_id", "clip_id", "video_id", "identity_id", "drop_reason", "views"], filter=cond
    )
    clip_ids = pc.unique(tracks.column("clip_id"))
    clips_ds, videos_ds = run.dataset("clips"), run.dataset("videos")
    clips = (
        clips_ds.to_table(
            columns=["clip_id", "start_s", "end_s", "caption", "drop_reason"], filter=pc.field("clip_id").isin(clip_ids)
        )
        if clips_ds is not None
        else pa.table({"clip_id": pa.array([], pa.string())})
    ).rename_columns(["clip_id", "start_s", "end_s", "caption", "clip_drop_reason"])
    videos = (
        videos_ds.to_table(
            columns=["video_id", "path"], filter=pc.field("video_id").isin(pc.unique(tracks["video_id"]))
        )
        if videos_ds is not None
        else pa.table({"video_id": pa.array([], pa.string()), "path": pa.array([], pa.string())})
    )
    views_of = dict(zip(tracks["track_id"].to_pylist(), tracks["views"].to_pylist(), strict=True))  # matched only
    joined = tracks.drop_columns(["views"]).join(clips, "clip_id", join_type="left outer")
    joined = joined.join(videos, "video_id", join_type="left outer")
    joined = joined.sort_by([("video_id", "ascending"), ("start_s", "ascending"), ("track_id", "ascending")])

    by_key: dict[tuple[str, str], dict[str, ClipRef]] = {}
    drop_of: dict[str, str | None] = {}
    for r in joined.to_pylist():  # only the matched identities' tracks
        key = ("identity", r["identity_id"]) if r["identity_id"] is not None else ("track", r["track_id"])
        clips_of = by_key.setdefault(key, {})
        ref = clips_of.get(r["clip_id"])
        if ref is None:
            start = r["start_s"] if r["start_s"] is not None else float("nan")
            end = r["end_s"] if r["end_s"] is not None else float("nan")
            ref = clips_of[r["clip_id"]] = ClipRef(
                clip_id=r["clip_id"],
                video_id=r["video_id"],
                video_path=r["path"] or "",
                start_s=start,
                end_s=end,
                track_ids=[],
                caption=r["caption"],
                drop_reason=r["clip_drop_reason"],
            )
        ref.track_ids.append(r["track_id"])
        drop_of[r["track_id"]] = r["drop_reason"]

    idents = run.dataset("identities")
    info = {}
    if ident_ids and idents is not None:
        t = idents.to_table(
            columns=["identity_id", "num_clips", "num_videos", "views"], filter=pc.field("identity_id").isin(ident_ids)
        )
        info = {r["identity_id"]: r for r in t.to_pylist()}
    for m in matches:
        key = ("identity", m.identity_id) if m.identity_id is not None else ("track", m.track_id)
        m.clips = list(by_key.get(key, {}).values())
        if m.identity_id is not None and m.identity_id in info:
            row = info[m.identity_id]
            m.num_clips, m.num_videos, m.views = row["num_clips"], row["num_videos"], list(row["views"] or [])
        else:
            m.num_clips = len(m.clips)
            m.num_videos = len({c.video_id for c in m.clips})
            m.views = list(views_of.get(m.track_id or "") or [])
        if m.track_id is not None:
            m.track_drop_reason = drop_of.get(m.track_id)


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
    out: list[Match] = []
    for pf in embed_query_photo(index, photo, face=face, stack=stack, **stack_kwargs):
        if pf.embedding is None:
            continue
        for m in index.search(pf.embedding, k=k, min_score=min_score):
            m.query = pf.describe()
            out.append(m)
    out.sort(key=lambda m: (-m.score, m.query["face"] if m.query else 0))
    return out
