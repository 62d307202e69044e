"""``datakit report``: a static HTML gallery of a run - people as rows, view bins as columns.

Output folder::

    index.html               summary counts, yaw histogram, drop reasons, errors, identities page 1
    identities-0002.html ... further pages of ``page_size`` identities (so thousands of identities open)
    crops/NNNNN.jpg          the best (rank 0) reference crop per identity and view bin, as a thumbnail

Files are named by the report itself (a counter), never from manifest strings: a crafted run with an
``identity_id`` of ``../../x`` cannot make the report write outside ``out``. Every string shown is
HTML-escaped, and bidirectional-text controls (U+202E and kin, which reorder what a reader sees) are shown
as visible escapes such as ``\\u202e``. The errors table shows source paths relative to the run's source
root, as the manifests record them.

Self-contained: inline CSS and SVG, images as relative files with ``loading="lazy"``, no script, no
font, no URL of any kind, so it opens offline and makes no request. Identities are ordered by number of
clips, then faces, then id; each row is ``<tr data-identity-id="...">`` with one cell per view bin of
``datakit.schema.VIEWS`` (an empty cell is marked ``class="empty"``), then the identity's clips with time
ranges and captions. Tables are read with pyarrow: crops in batches straight to files, never all at once.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.schema import VIEWS
from datakit.store import RunDir
from datakit.tools.photos import PhotoTooLargeError, open_image

__all__ = ["ReportResult", "build_report"]

THUMB_SIDE = 192
PAGE_SIZE = 100
MAX_CLIPS = 12  # clips listed per identity row ("+N more" beyond)
MAX_ERRORS = 500

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:18px 0 6px} .muted{color:#777;font-size:12px}
table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;font-size:12px}
th{background:#f0f0f0;text-align:left} .counts td{min-width:60px} .grid{display:flex;gap:24px;flex-wrap:wrap}
td.view{width:104px;height:104px;text-align:center;vertical-align:middle}
td.view img{max-width:100px;max-height:100px;display:block;margin:auto}
td.empty{background:repeating-linear-gradient(45deg,#f6f6f6,#f6f6f6 6px,#eee 6px,#eee 12px);color:#aaa}
.ident{font-family:monospace;font-size:11px;white-space:nowrap} .clips{max-width:520px}
.clips li{margin:0 0 3px} .cap{color:#555} .drop{color:#b33} .pager a,.pager b{margin-right:8px}
"""


@dataclass(slots=True)
class ReportResult:
    """Where the report went and what it holds."""

    index: Path
    pages: list[Path]
    num_identities: int
    num_crops: int


#: Bidirectional-text controls: embeddings, overrides, isolates, marks. One in a file name (U+202E) makes
#: ``evil\u202egpj.exe`` read as ``evilexe.jpg``; they are shown as visible escapes instead.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def _visible(text: str) -> str:
    """``text`` with every bidi control replaced by its escape (``\\u202e``)."""
    return _BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _e(value) -> str:
    """A value as HTML text: bidi controls made visible, then escaped (quotes too, so also safe in attributes)."""
    return html.escape(_visible("" if value is None else str(value)), quote=True)


def _counts(column: pa.ChunkedArray | None) -> list[tuple[str, int]]:
    """Value counts of a string column, nulls as "kept", most frequent first."""
    if column is None or len(column) == 0:
        return []
    vc = pc.value_counts(column.fill_null("(kept)"))
    pairs = [(v["values"].as_py(), v["counts"].as_py()) for v in vc]
    return sorted(pairs, key=lambda kv: (-kv[1], kv[0]))


def _write_thumbs(run: RunDir, out: Path) -> dict[tuple[str, str], dict]:
    """The rank-0 reference crop of every (identity, view), written as a thumbnail; returns its cell data."""
    cells: dict[tuple[str, str], dict] = {}
    dset = run.dataset("reference_views")
    if dset is None:
        return cells
    crops = out / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    cols = [
        c for c in ("identity_id", "view", "crop", "clip_id", "t_s", "yaw_deg", "quality") if c in dset.schema.names
    ]
    for batch in dset.to_batches(columns=cols, filter=pc.field("rank") == 0, batch_size=256):
        for row in batch.to_pylist():
            name = f"{len(cells):05d}.jpg"  # named here, never from manifest strings (they could hold "../")
            try:
                with open_image(row["crop"] or b"", f"crop of {row['identity_id']!r} {row['view']!r}") as img:
                    img = img.convert("RGB")
                    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
                    img.save(crops / name, "JPEG", quality=85)
                    size = img.size
            except (OSError, PhotoTooLargeError):
                continue  # an unreadable (or absurdly large) crop leaves its cell empty
            cells[(row["identity_id"], row["view"])] = {
                "src": f"crops/{name}",
                "size": size,
                "clip_id": row.get("clip_id"),
                "t_s": row.get("t_s"),
                "yaw": row.get("yaw_deg"),
                "quality": row.get("quality"),
            }
    return cells


def _clips_by_identity(run: RunDir) -> dict[str, list[dict]]:
    """identity_id -> its clips (time range, video path, caption, drop reason), by video and time."""
    tracks = run.scan("tracks", ["identity_id", "clip_id", "video_id"], filter=pc.field("identity_id").is_valid())
    if tracks is None or tracks.num_rows == 0:
        return {}
    pairs = tracks.group_by(["identity_id", "clip_id", "video_id"]).aggregate([])
    clips = run.scan("clips", ["clip_id", "start_s", "end_s", "caption", "drop_reason"])
    videos = run.scan("videos", ["video_id", "path"])
    if clips is not None:
        pairs = pairs.join(clips, "clip_id", join_type="left outer")
    if videos is not None:
        pairs = pairs.join(videos, "video_id", join_type="left outer")
    sort = [("identity_id", "ascending"), ("video_id", "ascending")]
    if "start_s" in pairs.column_names:
        sort.append(("start_s", "ascending"))
    out: dict[str, list[dict]] = defaultdict(list)
    for row in pairs.sort_by(sort).to_pylist():
        out[row["identity_id"]].append(row)
    return out


def _yaw_svg(yaws: np.ndarray, frontal_max: float, profile_min: float) -> str:
    """An inline SVG histogram of face yaw in 10 degree bins from -90 to 90, view-bin edges dashed."""
    width, height, pad = 560, 180, 28
    edges = np.arange(-90, 91, 10)
    counts, _ = np.histogram(np.clip(yaws, -89.999, 89.999), bins=edges) if len(yaws) else (np.zeros(18, int), None)
    top = max(int(counts.max()), 1)
    bar_w = (width - 2 * pad) / len(counts)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="yaw histogram">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
    ]
    for i, c in enumerate(counts.tolist()):
        h = (height - 2 * pad) * c / top
        x = pad + i * bar_w
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{height - pad - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="#4a7bd0">'
            f"<title>{edges[i]}..{edges[i + 1]} deg: {c} faces</title></rect>"
        )

    def x_of(deg: float) -> float:
        return pad + (deg + 90) / 180 * (width - 2 * pad)

    for deg in (-profile_min, -frontal_max, frontal_max, profile_min):
        parts.append(
            f'<line x1="{x_of(deg):.1f}" x2="{x_of(deg):.1f}" y1="{pad / 2}" y2="{height - pad}" '
            'stroke="#c33" stroke-dasharray="4 3"/>'
        )
    for deg in (-90, -60, -30, 0, 30, 60, 90):
        parts.append(f'<text x="{x_of(deg):.1f}" y="{height - 8}" font-size="10" text-anchor="middle">{deg}</text>')
    parts.append(f'<text x="{pad}" y="14" font-size="10">max {top} faces / bin; yaw &gt; 0 = facing image left</text>')
    parts.append("</svg>")
    # The SVG namespace is an identifier, not a request; keep the page free of any URL-looking text anyway.
    return "".join(parts).replace(' xmlns="http://www.w3.org/2000/svg"', "")


def _kv_table(rows: list[tuple[str, object]], head: tuple[str, str]) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table class='counts'><tr><th>{_e(head[0])}</th><th>{_e(head[1])}</th></tr>{body}</table>"


def _identity_row(ident: dict, cells: dict, clips: list[dict], max_clips: int) -> str:
    iid = ident["identity_id"]
    views = ident.get("views") or []
    head = (
        f"<td><div class='ident'>{_e(iid)}</div><div class='muted'>{_e(ident['num_clips'])} clips, "
        f"{_e(ident['num_videos'])} videos<br>{_e(ident['num_tracks'])} tracks, {_e(ident.get('num_faces', 0))} faces"
        f"<br>views: {_e(', '.join(views) or '-')}</div></td>"
    )
    tds = []
    for view in VIEWS:
        cell = cells.get((iid, view))
        if cell is None:
            tds.append(f"<td class='view empty' data-view='{view}' title='no {view} reference'>&ndash;</td>")
            continue
        w, h = cell["size"]
        yaw = "" if cell["yaw"] is None else f", yaw {cell['yaw']:+.0f}"
        title = f"{view}: {cell['clip_id']} at {cell['t_s']:.2f} s{yaw}" if cell["t_s"] is not None else view
        tds.append(
            f"<td class='view' data-view='{view}'><img src='{_e(cell['src'])}' loading='lazy' width='{w}' "
            f"height='{h}' alt='{_e(iid)} {view}' title='{_e(title)}'></td>"
        )
    items = []
    for c in clips[:max_clips]:
        rng = "" if c.get("start_s") is None else f"{c['start_s']:.2f}-{c['end_s']:.2f} s"
        cap = f"<br><span class='cap'>{_e(c['caption'])}</span>" if c.get("caption") else ""
        drop = f" <span class='drop'>[dropped: {_e(c['drop_reason'])}]</span>" if c.get("drop_reason") else ""
        items.append(
            f"<li><span class='ident'>{_e(c['clip_id'])}</span> {_e(c.get('path') or '')} {rng}{drop}{cap}</li>"
        )
    more = f"<li class='muted'>+{len(clips) - max_clips} more clips</li>" if len(clips) > max_clips else ""
    clip_td = f"<td class='clips'><ul>{''.join(items)}{more}</ul></td>"
    return f"<tr data-identity-id='{_e(iid)}'>{head}{''.join(tds)}{clip_td}</tr>"


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def _pager(page: int, pages: int, names: list[str]) -> str:
    if pages <= 1:
        return ""
    links = [f"<b>{i + 1}</b>" if i == page else f"<a href='{names[i]}'>{i + 1}</a>" for i in range(pages)]
    return f"<div class='pager'>identity pages: {''.join(links)}</div>"


def build_report(
    run: str | Path, out: str | Path, *, page_size: int = PAGE_SIZE, max_clips: int = MAX_CLIPS
) -> ReportResult:
    """Write the HTML report of ``run`` into ``out`` (created); returns where its pages are.

    Raises :class:`datakit.store.NotARunError` when ``run`` is not a run folder."""
    rundir, out = RunDir.open(run), Path(out)
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    record = rundir.record()
    out.mkdir(parents=True, exist_ok=True)
    cells = _write_thumbs(rundir, out)
    clips = _clips_by_identity(rundir)
    idents = _identities(rundir)
    summary_html = _summary_html(rundir, record, num_identities=len(idents))
    rows = [_identity_row(i, cells, clips.get(i["identity_id"], []), max_clips) for i in idents]
    paths = _write_pages(out, rundir.root.name, summary_html, rows, page_size)
    return ReportResult(index=paths[0], pages=paths, num_identities=len(idents), num_crops=len(cells))


def _identities(run: RunDir) -> list[dict]:
    """The identities with their counts, most clips first (then faces, then id)."""
    table = run.scan("identities", ["identity_id", "num_tracks", "num_clips", "num_videos", "num_faces", "views"])
    if table is None or not table.num_rows:
        return []
    order = [("num_clips", "descending"), ("num_faces", "descending"), ("identity_id", "ascending")]
    return table.sort_by(order).to_pylist()


def _summary_counts(run: RunDir, record: dict, tables: dict[str, pa.Table | None], num_identities: int) -> list:
    """The summary table's rows: counts from run.json's summary, else counted from the tables."""
    summary = record.get("summary") or {}
    videos = summary.get("videos") or {}

    def rows_of(name: str) -> int:
        return tables[name].num_rows if tables[name] is not None else 0

    return [
        ("videos", sum(videos.values()) if summary else run.count_rows("videos")),
        ("video status", ", ".join(f"{k} {v}" for k, v in sorted(videos.items())) or "-"),
        ("clips", summary.get("num_clips", rows_of("clips"))),
        ("faces", summary.get("num_faces", rows_of("faces"))),
        ("tracks", summary.get("num_tracks", rows_of("tracks"))),
        ("identities", summary.get("num_identities", num_identities)),
        ("identities in several videos", summary.get("num_multi_video_identities", "-")),
        ("reference views", summary.get("num_reference_views", "-")),
        ("samples", summary.get("num_samples", "-")),
        ("samples with references from another context", summary.get("num_samples_other_context", "-")),
        ("errors", summary.get("num_errors", rows_of("errors"))),
        ("face stack", (record.get("face_stack") or {}).get("name", "-")),
        ("pipeline version", record.get("pipeline_version", "-")),
    ]


def _source_prefixes(record: dict) -> list[str]:
    """The run's source root as a build may have written it into messages (as typed, absolute, resolved),
    each ending in a separator, longest first."""
    src = (record.get("config") or {}).get("src")
    if not isinstance(src, str) or not src:
        return []
    forms = {src, str(Path(src).absolute())}
    with contextlib.suppress(OSError, RuntimeError):  # a link loop: the other two forms still apply
        forms.add(str(Path(src).resolve()))
    return sorted({f.rstrip(os.sep) + os.sep for f in forms if f.rstrip(os.sep)}, key=len, reverse=True)


def _relative_to_source(text, prefixes: list[str]):
    """``text`` with the source root's prefix removed where a path starts (``'/data/in/a.mp4'`` -> ``'a.mp4'``,
    but not inside ``/other/data/in/``): the report shows paths as the manifests record them."""
    if not isinstance(text, str) or not prefixes:
        return text
    starts = "|".join(re.escape(p) for p in prefixes)  # longest first
    return re.sub(rf"(?<![\w.~/-])(?:{starts})", "", text)


def _errors_html(errors: pa.Table | None, record: dict) -> str:
    """The errors table (its first ``MAX_ERRORS`` rows), or a line saying there are none."""
    if errors is None or not errors.num_rows:
        return '<p class="muted">no errors</p>'
    prefixes = _source_prefixes(record)

    def rel(value):
        return _e(_relative_to_source(value, prefixes))

    rows = "".join(
        f"<tr><td>{_e(r['stage'])}</td><td>{rel(r['item'])}</td><td>{_e(r['error_type'])}</td>"
        f"<td>{rel(r['message'])}</td></tr>"
        for r in errors.slice(0, MAX_ERRORS).to_pylist()
    )
    if errors.num_rows > MAX_ERRORS:
        rows += f"<tr><td colspan='4' class='muted'>+{errors.num_rows - MAX_ERRORS} more</td></tr>"
    return f"<table><tr><th>stage</th><th>item</th><th>error_type</th><th>message</th></tr>{rows}</table>"


def _summary_html(run: RunDir, record: dict, *, num_identities: int) -> str:
    """The top of the first page: title, summary counts, yaw histogram, drop reasons, errors."""
    tables = {
        "tracks": run.scan("tracks", ["drop_reason"]),
        "clips": run.scan("clips", ["drop_reason"]),
        "faces": run.scan("faces", ["yaw_deg"]),
        "errors": run.scan("errors", ["stage", "item", "error_type", "message"]),
    }
    counts = _summary_counts(run, record, tables, num_identities)
    bins = (record.get("config") or {}).get("view_bins") or {}
    faces = tables["faces"]
    yaws = faces.column("yaw_deg").drop_null().to_numpy() if faces is not None else np.zeros(0)
    svg = _yaw_svg(
        np.asarray(yaws, np.float64), float(bins.get("frontal_max_deg", 20)), float(bins.get("profile_min_deg", 60))
    )
    track_drops = _kv_table(_counts(_col(tables["tracks"], "drop_reason")), ("drop_reason", "tracks"))
    clip_drops = _kv_table(_counts(_col(tables["clips"], "drop_reason")), ("drop_reason", "clips"))
    return (
        f"<h1>datakit report: {_e(run.root.name)}</h1><p class='muted'>{_e(record.get('updated_at', ''))} "
        f"&middot; state {_e(record.get('state', '?'))}</p>"
        f"<div class='grid'><div><h2>Summary</h2>{_kv_table(counts, ('what', 'count'))}</div>"
        f"<div><h2>Face yaw (all detected faces)</h2>{svg}</div>"
        f"<div><h2>Track drop reasons</h2>{track_drops}</div>"
        f"<div><h2>Clip drop reasons</h2>{clip_drops}</div>"
        f"</div><h2>Errors</h2>{_errors_html(tables['errors'], record)}"
    )


def _write_pages(out: Path, title: str, summary_html: str, rows: list[str], page_size: int) -> list[Path]:
    """The identity rows in pages of ``page_size`` (the summary on the first), each written atomically."""
    n_pages = max((len(rows) + page_size - 1) // page_size, 1)
    names = ["index.html", *[f"identities-{i + 1:04d}.html" for i in range(1, n_pages)]]
    head = "<tr><th>identity</th>" + "".join(f"<th>{v}</th>" for v in VIEWS) + "<th>clips</th></tr>"
    paths = []
    for page in range(n_pages):
        chunk = rows[page * page_size : (page + 1) * page_size]
        first = page * page_size + 1
        pager = _pager(page, n_pages, names)
        table = (
            f"<h2>Identities {first}-{first + len(chunk) - 1} of {len(rows)}</h2>{pager}"
            f"<table class='identities'>{head}{''.join(chunk)}</table>{pager}"
            if rows
            else "<h2>Identities</h2><p class='muted'>no identities</p>"
        )
        top = summary_html if page == 0 else "<p><a href='index.html'>summary</a></p>"
        path = out / names[page]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(_page(f"datakit report: {title}", top + table), encoding="utf-8")
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _col(table: pa.Table | None, name: str) -> pa.ChunkedArray | None:
    return table.column(name) if table is not None and name in table.column_names else None
