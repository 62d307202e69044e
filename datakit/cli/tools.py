"""Command lines over finished manifests: ``datakit query``, ``report``, ``split`` and ``leakage``.

Each command is a parser (``_xxx_parser``) and a runner (``_run_xxx``) that returns the exit status;
:func:`add_commands` registers them on ``datakit``'s subparsers (the runner travels as ``args.handler``).
User errors print one line on stderr and exit 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_commands"]

QUERY_HELP = """\
Find the people of one or more runs that match a photo, an identity or an embedding, with their clips.

Exactly one of --image, --identity, --embedding. A photo is embedded with the face stack recorded in the
runs' run.json (backend, models folder, insightface pack); every face of the photo is queried, or only
--face N (0 = leftmost). Runs built with different embedders cannot be searched together.

Searched: identity centroids and track embeddings, so a face that fell outside every identity (a track
dropped by a gate) is still found, reported with its track. The vector index (exact for small runs,
HNSW for large ones, recall@10 measured when built) is kept in RUN/_index/ and rebuilt when the
identities or tracks change.

Output: a table (identity, score, clips, videos, views, clip ids with time ranges), or with --json a
list of matches, best first: {identity_id, score, kind, track_id, run, num_clips, num_videos, views,
clips: [{clip_id, video_id, video_path, start_s, end_s, track_ids, caption, drop_reason}], query}.
No match above --min-score is not an error: it is said plainly (exit 0, `[]` with --json).

Exit status: 0 (matches or not), 1 for an error (no face in the photo, unknown identity, ...), 2 for a
bad command line.
"""


def _manifests_arg(p: argparse.ArgumentParser, *, many: bool = True) -> None:
    p.add_argument(
        "--manifests",
        "-m",
        type=Path,
        required=True,
        nargs="+" if many else None,
        help="run folder(s) written by `datakit build --out`",
    )


def _stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", type=Path, help="override the models folder recorded in run.json")
    p.add_argument("--insightface-pack", type=Path, help="override the insightface pack recorded in run.json")


def _query_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="find the identities and clips matching a photo, identity or embedding",
        description=QUERY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _manifests_arg(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=Path, help="a photo; each face in it is a query")
    what.add_argument("--identity", help="an identity_id of the runs (its centroid is the query)")
    what.add_argument("--embedding", type=Path, help=".npy file: one (D,) embedding or (N, D) embeddings")
    p.add_argument("--face", type=int, help="with --image: query only face N (0 = leftmost)")
    p.add_argument("-k", type=int, default=10, help="at most this many matches per query (default 10)")
    p.add_argument(
        "--min-score",
        type=float,
        help="least cosine similarity to report (default: the embedder's same_person_cosine from run.json)",
    )
    p.add_argument("--json", action="store_true", help="print the matches as JSON")
    p.add_argument("--rebuild-index", action="store_true", help="rebuild RUN/_index/ even when it is current")
    _stack_args(p)
    p.set_defaults(handler=_run_query)


def _fmt_clip(c) -> str:
    extra = f" [dropped: {c.drop_reason}]" if c.drop_reason else ""
    return f"{c.clip_id}  {c.video_path}  {c.start_s:.2f}-{c.end_s:.2f} s{extra}"


def format_matches(matches, *, header: str) -> str:
    """The readable table of ``datakit query``."""
    lines = [header]
    if not matches:
        return "\n".join(lines)
    lines.append(f"  {'#':>2}  {'identity':<28} {'score':>6} {'clips':>5} {'videos':>6}  views")
    for i, m in enumerate(matches, 1):
        who = m.identity_id or f"(track {m.track_id})"
        lines.append(
            f"  {i:>2}  {who:<28} {m.score:6.3f} {m.num_clips:>5} {m.num_videos:>6}  {','.join(m.views) or '-'}"
        )
        if m.identity_id is None:
            lines.append(f"      outside every identity (track drop_reason: {m.track_drop_reason or 'none'})")
        for c in m.clips:
            lines.append(f"      {_fmt_clip(c)}")
    return "\n".join(lines)


def _err(cmd: str, exc: BaseException) -> int:
    print(f"datakit {cmd}: error: {exc}", file=sys.stderr)
    return 1


def _run_query(args: argparse.Namespace) -> int:
    import numpy as np

    from datakit.tools.query import QueryError, face_stack_for, open_index

    if args.k < 1:
        return _err("query", ValueError("-k must be at least 1"))
    try:
        index = open_index(args.manifests, rebuild=args.rebuild_index)
        min_score = index.same_person_cosine if args.min_score is None else args.min_score
        queries: list[tuple[dict, np.ndarray | None]] = []
        if args.image is not None:
            from datakit.tools.photos import embed_photo

            stack = face_stack_for(index, models_dir=args.models_dir, insightface_pack=args.insightface_pack)
            for pf in embed_photo(args.image, stack, face=args.face):
                queries.append((pf.describe(), pf.embedding))
        elif args.identity is not None:
            queries.append(({"identity_id": args.identity}, index.identity_embedding(args.identity)))
        else:
            if not args.embedding.is_file():
                raise FileNotFoundError(f"embedding file {args.embedding} does not exist")
            arr = np.load(args.embedding, allow_pickle=False)
            arr = np.atleast_2d(np.asarray(arr, np.float32))
            if arr.ndim != 2:
                raise QueryError(f"{args.embedding}: expected a (D,) or (N, D) array, got shape {arr.shape}")
            queries.extend(({"embedding": str(args.embedding), "row": i}, row) for i, row in enumerate(arr))
        results = []
        for desc, emb in queries:
            if emb is None:
                results.append((desc, [], None, "the embedder could not embed this face"))
                continue
            got = index.search(emb, k=args.k, min_score=min_score)
            for m in got:
                m.query = desc
            best = None if got else index.best_score(emb)
            results.append((desc, got, best, None))
    except (QueryError, FileNotFoundError, ValueError, OSError) as exc:
        return _err("query", exc)
    if args.json:
        flat = sorted((m for _, got, _, _ in results for m in got), key=lambda m: -m.score)
        print(json.dumps([m.to_dict() for m in flat], indent=2))
        return 0
    info = index.describe()
    kinds = ", ".join(f"{d['kind']} index of {d['n']} vectors (recall@10 {d['recall_at_10']})" for d in info)
    print(f"searched {len(info)} run(s): {kinds}; min score {min_score:.3f}")
    for desc, got, best, problem in results:
        what = _describe_query(desc)
        if problem:
            print(f"\n{what}: {problem}")
        elif not got:
            near = f" (best: {best.identity_id or 'track ' + str(best.track_id)} at {best.score:.3f})" if best else ""
            print(f"\n{what}: no match above the threshold {min_score:.3f}{near}")
        else:
            print()
            print(format_matches(got, header=f"{what}: {len(got)} match(es)"))
    return 0


def _describe_query(desc: dict) -> str:
    if "image" in desc:
        yaw = "" if desc.get("yaw_deg") is None else f", yaw {desc['yaw_deg']:+.0f} deg"
        return f"{desc['image']} face {desc['face']} of {desc['num_faces']} ({desc['face_px']:.0f} px{yaw})"
    if "identity_id" in desc:
        return f"identity {desc['identity_id']}"
    return f"{desc['embedding']} row {desc['row']}"


REPORT_HELP = """\
Write a static HTML gallery of a run into OUT: summary counts, a yaw histogram of all faces, track and
clip drop reasons, the errors table, then one row per identity (data-identity-id) with its best
reference crop per view bin (frontal, left, right, left_profile, right_profile; empty cells marked) and
its clips with time ranges and captions. Identities come in pages of --page-size (index.html, then
identities-0002.html, ...), images as lazy-loaded files under OUT/crops/. The page has no script, font
or URL: it opens offline and makes no network request.
"""


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a static HTML gallery of a run",
        description=REPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _manifests_arg(p, many=False)
    p.add_argument("--out", type=Path, required=True, help="folder for index.html and its images (created)")
    p.add_argument("--page-size", type=int, default=100, help="identities per page (default 100)")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from datakit.tools.report import build_report

    try:
        result = build_report(args.manifests, args.out, page_size=args.page_size)
    except (FileNotFoundError, ValueError, OSError) as exc:
        return _err("report", exc)
    print(
        f"report of {result.num_identities} identities ({result.num_crops} reference crops, "
        f"{len(result.pages)} page(s)) -> {result.index}"
    )
    return 0


SPLIT_HELP = """\
Assign the identities of a run to train or eval, identity-disjoint, and write RUN/splits/ (one row per
identity and one per sample: kind, item_id, split, identity_ids, reason, seed, eval_fraction).

Identities seen together in a sample are assigned together, so random assignment splits no sample;
identities listed in --eval-identities (one id per line, or a JSON list) always go to eval. A sample
whose people end up in both splits is excluded from both, and counted. The same run and --seed give the
same split.
"""


def _split_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "split",
        help="identity-disjoint train/eval split of a run",
        description=SPLIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _manifests_arg(p, many=False)
    p.add_argument("--eval-fraction", type=float, required=True, help="share of identities in eval (0..1)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the assignment (default 0)")
    p.add_argument("--eval-identities", type=Path, help="file of identity ids that must be in eval")
    p.add_argument("--dry-run", action="store_true", help="print the counts, write nothing")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(handler=_run_split)


def _run_split(args: argparse.Namespace) -> int:
    from datakit.tools.splits import read_identity_file, split_run

    try:
        forced = read_identity_file(args.eval_identities) if args.eval_identities else []
        result = split_run(
            args.manifests,
            eval_fraction=args.eval_fraction,
            seed=args.seed,
            eval_identities=forced,
            write=not args.dry_run,
        )
    except (FileNotFoundError, ValueError, OSError) as exc:
        return _err("split", exc)
    if args.json:
        print(json.dumps({**result.counts, "path": str(result.path) if result.path else None}))
    else:
        print(result.format())
    return 0


LEAKAGE_HELP = """\
Check that no person of a benchmark was in the training data: every face of every benchmark image is
embedded with the training run's face stack and searched among its identities and tracks.

--images is a folder of photos (searched recursively) or a harmoview case file (JSONL; each case's
identities[].references paths, relative to the file's folder). A face matching a training identity at
or above --threshold (default: the embedder's same_person_cosine from run.json) is reported with the
matched identity, score and clips. Images without a detectable face are listed as not checked.

Exit status: 0 = no leakage found, 1 = LEAKAGE FOUND (or an error, said on stderr), 2 = bad command line.
"""


def _leakage_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leakage",
        help="check that benchmark faces are not training identities (exit 1 if so)",
        description=LEAKAGE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _manifests_arg(p)
    p.add_argument("--images", type=Path, required=True, help="folder of benchmark photos, or a cases .jsonl")
    p.add_argument("--threshold", type=float, help="least cosine that counts as the same person")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _stack_args(p)
    p.set_defaults(handler=_run_leakage)


def _run_leakage(args: argparse.Namespace) -> int:
    from datakit.tools.leakage import check_leakage
    from datakit.tools.query import QueryError, open_index

    try:
        index = open_index(args.manifests)
        report = check_leakage(
            index,
            args.images,
            threshold=args.threshold,
            models_dir=args.models_dir,
            insightface_pack=args.insightface_pack,
        )
    except (QueryError, FileNotFoundError, ValueError, OSError) as exc:
        return _err("leakage", exc)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 1 if report.leaked else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register query, report, split and leakage on ``datakit``'s subparsers."""
    _query_parser(sub)
    _report_parser(sub)
    _split_parser(sub)
    _leakage_parser(sub)
