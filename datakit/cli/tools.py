"""Command lines over finished manifests: ``datakit query``, ``report``, ``split`` and ``leakage``.

Each command is a parser (``_add_xxx``, registered with :func:`datakit.cli.flags.add_command`) and a
runner (``_run_xxx``) that calls the library (:mod:`datakit.tools`), prints and returns the exit status;
user errors propagate to :func:`datakit.cli.main`, which prints them as one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from datakit.cli.flags import add_command, add_face_stack_flags, add_json_flag, add_manifests

if TYPE_CHECKING:
    from datakit.tools.matches import ClipRef, Match
    from datakit.tools.query import QueryResult

__all__ = ["add_commands", "format_matches"]

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


def _add_threshold(p: argparse.ArgumentParser, flag: str) -> None:
    """The least score that counts as the same person; by default the runs' embedder's calibrated one."""
    p.add_argument(
        flag,
        type=float,
        metavar="COSINE",
        help="least cosine similarity that counts as the same person (default: the embedder's "
        "same_person_cosine from run.json)",
    )


def _stack_overrides(args: argparse.Namespace) -> dict[str, Path | None]:
    """Where the runs' face stack files are here (``add_face_stack_flags(recorded=True)``), for the library."""
    return {"models_dir": args.models_dir, "insightface_pack": args.insightface_pack}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _add_query(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "query",
        _run_query,
        help="find the identities and clips matching a photo, identity or embedding",
        description=QUERY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_manifests(p, several=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=Path, metavar="PHOTO", help="a photo; each face in it is a query")
    what.add_argument("--identity", metavar="ID", help="an identity_id of the runs (its centroid is the query)")
    what.add_argument(
        "--embedding", type=Path, metavar="NPY", help=".npy file: one (D,) embedding or (N, D) embeddings"
    )
    p.add_argument("--face", type=int, metavar="N", help="with --image: query only face N (0 = leftmost)")
    p.add_argument(
        "-k",
        type=_positive_int,
        default=10,
        metavar="K",
        help="at most this many matches per query (default %(default)s)",
    )
    _add_threshold(p, "--min-score")
    add_json_flag(p, "the matches")
    p.add_argument("--rebuild-index", action="store_true", help="rebuild RUN/_index/ even when it is current")
    add_face_stack_flags(p, recorded=True)


def _fmt_clip(c: ClipRef) -> str:
    extra = f" [dropped: {c.drop_reason}]" if c.drop_reason else ""
    return f"{c.clip_id}  {c.video_path}  {c.start_s:.2f}-{c.end_s:.2f} s{extra}"


def format_matches(matches: list[Match], *, header: str) -> str:
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


def _run_query(args: argparse.Namespace) -> int:
    from datakit.tools.query import answer_queries, make_queries, open_index

    index = open_index(args.manifests, rebuild=args.rebuild_index)
    min_score = index.same_person_cosine if args.min_score is None else args.min_score
    what = {"image": args.image, "identity": args.identity, "embedding": args.embedding, "face": args.face}
    queries = make_queries(index, **what, **_stack_overrides(args))
    results = answer_queries(index, queries, k=args.k, min_score=min_score)
    if args.json:
        flat = sorted((m for r in results for m in r.matches), key=lambda m: -m.score)
        print(json.dumps([m.to_dict() for m in flat], indent=2))
        return 0
    kinds = ", ".join(
        f"{d['kind']} index of {d['n']} vectors (recall@10 {d['recall_at_10']})" for d in index.describe()
    )
    print(f"searched {len(index.runs)} run(s): {kinds}; min score {min_score:.3f}")
    for r in results:
        print(_format_result(r, min_score))
    return 0


def _format_result(result: QueryResult, min_score: float) -> str:
    """One query's paragraph of ``datakit query``'s table (a blank line first)."""
    what = _describe_query(result.query)
    if result.problem:
        return f"\n{what}: {result.problem}"
    if not result.matches:
        best = result.best
        near = f" (best: {best.identity_id or 'track ' + str(best.track_id)} at {best.score:.3f})" if best else ""
        return f"\n{what}: no match above the threshold {min_score:.3f}{near}"
    return "\n" + format_matches(result.matches, header=f"{what}: {len(result.matches)} match(es)")


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


def _add_report(sub: argparse._SubParsersAction) -> None:
    from datakit.tools.report import PAGE_SIZE

    p = add_command(
        sub,
        "report",
        _run_report,
        help="write a static HTML gallery of a run",
        description=REPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_manifests(p)
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder for index.html and its images (created)"
    )
    p.add_argument(
        "--page-size",
        type=_positive_int,
        default=PAGE_SIZE,
        metavar="N",
        help="identities per page (default %(default)s)",
    )


def _run_report(args: argparse.Namespace) -> int:
    from datakit.tools.report import build_report

    result = build_report(args.manifests, args.out, page_size=args.page_size)
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


def _add_split(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "split",
        _run_split,
        help="identity-disjoint train/eval split of a run",
        description=SPLIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_manifests(p)
    p.add_argument("--eval-fraction", type=float, required=True, metavar="F", help="share of identities in eval (0..1)")
    p.add_argument(
        "--seed", type=int, default=0, metavar="N", help="random seed of the assignment (default %(default)s)"
    )
    p.add_argument("--eval-identities", type=Path, metavar="FILE", help="file of identity ids that must be in eval")
    p.add_argument("--dry-run", action="store_true", help="print the counts, write nothing")
    add_json_flag(p, "the counts")


def _run_split(args: argparse.Namespace) -> int:
    from datakit.tools.splits import read_identity_file, split_run

    forced = read_identity_file(args.eval_identities) if args.eval_identities else []
    result = split_run(
        args.manifests, eval_fraction=args.eval_fraction, seed=args.seed, eval_identities=forced, write=not args.dry_run
    )
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


def _add_leakage(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "leakage",
        _run_leakage,
        help="check that benchmark faces are not training identities (exit 1 if so)",
        description=LEAKAGE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_manifests(p, several=True)
    p.add_argument(
        "--images", type=Path, required=True, metavar="PATH", help="folder of benchmark photos, or a cases .jsonl"
    )
    _add_threshold(p, "--threshold")
    add_json_flag(p, "the report")
    add_face_stack_flags(p, recorded=True)


def _run_leakage(args: argparse.Namespace) -> int:
    from datakit.tools.leakage import check_leakage
    from datakit.tools.query import open_index

    report = check_leakage(open_index(args.manifests), args.images, threshold=args.threshold, **_stack_overrides(args))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 1 if report.leaked else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register query, report, split and leakage on ``datakit``'s subparsers."""
    _add_query(sub)
    _add_report(sub)
    _add_split(sub)
    _add_leakage(sub)
