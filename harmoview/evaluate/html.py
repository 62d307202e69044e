"""The static evaluation page: one row per case with its references, a few sampled frames and its scores.

Images are written beside the page (``images/``) and linked relatively, so the folder opens offline and
can be copied anywhere. Their names are ``<case_id>_NNN.jpg``, made here (the case id is checked by
:func:`~harmoview.evaluate.cases.parse_case`): identity ids and paths from the case file never name a file.
``overview.png`` draws the same rows into one image.
"""

from __future__ import annotations

import html
from pathlib import Path

import cv2
import numpy as np

from datakit.tools.photos import PHOTO_MAX_SIDE, read_photo_bgr
from harmoview.evaluate.cases import Case
from harmoview.evaluate.frames import SampledFrame
from harmoview.evaluate.summary import SUMMARY_METRICS

THUMB_PX = 128  #: thumbnail height on the page and in overview.png

_STYLE = """
body { font-family: sans-serif; margin: 16px; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: left; }
img { height: THUMBpx; margin-right: 4px; }
.label { font-size: 11px; color: #555; }
.none { color: #999; }
""".replace("THUMB", str(THUMB_PX))


def _thumb(bgr: np.ndarray) -> np.ndarray:
    height, width = bgr.shape[:2]
    return cv2.resize(bgr, (max(1, round(width * THUMB_PX / height)), THUMB_PX), interpolation=cv2.INTER_AREA)


def _fmt(value) -> str:
    if value is None:
        return '<span class="none">n/a</span>'
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _preview(samples: list[SampledFrame], count: int) -> list[SampledFrame]:
    if len(samples) <= count:
        return samples
    return [samples[i] for i in np.linspace(0, len(samples) - 1, count).round().astype(int)]


def _case_images(case: Case, result: dict, samples: list[SampledFrame], root: Path, folder: Path, count: int):
    """Write one case's thumbnails; returns [(relative path, label, image)] for references then frames."""
    items = []
    for ident, paths in zip(case.identities, case.reference_paths(root), strict=True):
        for view, path in paths.items():
            try:  # the photo reader's pixel budget applies to references too
                image = read_photo_bgr(path, max_side=PHOTO_MAX_SIDE)
            except (OSError, ValueError):
                continue  # scoring already reported an unusable reference
            items.append((f"{ident.identity_id} {view}", image))
    scored = {f["index"]: f for s in result.get("identities", []) for f in s["frames"]}
    for sample in _preview(samples, count):
        face = scored.get(sample.index)
        label = f"t={sample.t_s:.1f}s " + (f"sim {face['facesim']:.2f} {face['view'] or ''}" if face else "no face")
        items.append((label, sample.bgr))
    out = []
    for number, (label, image) in enumerate(items):
        name = f"{case.case_id}_{number:03d}.jpg"  # named here: labels hold case-file strings
        thumb = _thumb(image)
        cv2.imwrite(str(folder / name), thumb, [cv2.IMWRITE_JPEG_QUALITY, 85])
        out.append((f"images/{name}", label, thumb))
    return out


def _scores_html(result: dict) -> str:
    keys = ("status", *SUMMARY_METRICS)
    lines = [f"<b>{k}</b>: {_fmt(result.get(k))}" for k in keys]
    for view, entry in (result.get("facesim_by_yaw_bin") or {}).items():
        lines.append(f"{view}: {entry['facesim_multiview']:.3f} ({entry['num_frames']} frames)")
    if result.get("error"):
        lines.append(f"<b>error</b>: {html.escape(result['error'])}")
    return "<br>".join(lines)


def write_report(
    rows: list[tuple[Case, dict, list[SampledFrame]]], summary: dict, root: Path, out: Path, count: int
) -> Path:
    """Write ``index.html`` and ``overview.png`` for evaluated cases; returns the page's path."""
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    body, drawn = [], []
    for case, result, samples in rows:
        images = _case_images(case, result, samples, root, folder, count)
        cells = "".join(
            f'<figure style="display:inline-block;margin:0"><img src="{html.escape(src)}" alt="">'
            f'<figcaption class="label">{html.escape(label)}</figcaption></figure>'
            for src, label, _ in images
        )
        body.append(
            f"<tr><td><b>{html.escape(case.case_id)}</b><br><span class='label'>{html.escape(case.prompt)}</span></td>"
            f"<td>{cells}</td><td>{_scores_html(result)}</td></tr>"
        )
        drawn.append((f"{case.case_id}  facesim {_plain(result.get('facesim'))}  multiview "
                      f"{_plain(result.get('facesim_multiview'))}  detection {_plain(result.get('detection_rate'))}",
                      [image for _, _, image in images]))  # fmt: skip
    overall = "".join(
        f"<tr><td>{name}</td><td>{_fmt(m['mean'])}</td><td>{m['num_cases']}</td></tr>"
        for name, m in summary["metrics"].items()
    )
    stack = html.escape(summary["face_stack"]["name"])
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>HarmoView evaluation</title><style>{_STYLE}</style>"
        f"</head><body><h1>HarmoView evaluation</h1><p>{summary['num_cases']} cases; face stack {stack}; "
        f"text model {html.escape(str(summary['clip']))}</p>"
        f"<table><tr><th>metric</th><th>mean</th><th>cases</th></tr>{overall}</table><h2>Cases</h2>"
        f"<table><tr><th>case</th><th>references | sampled frames</th><th>scores</th></tr>{''.join(body)}</table>"
        "</body></html>"
    )
    path = out / "index.html"
    path.write_text(page)
    _write_overview(drawn, out / "overview.png")
    return path


def _plain(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _write_overview(rows: list[tuple[str, list[np.ndarray]]], path: Path) -> None:
    """Each case as a caption line over its thumbnails, stacked into one PNG."""
    strips = []
    for caption, images in rows:
        strip = np.concatenate(images, axis=1) if images else np.zeros((THUMB_PX, 400, 3), np.uint8)
        header = np.full((28, max(strip.shape[1], 900), 3), 255, np.uint8)
        cv2.putText(header, caption, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        strip = np.pad(strip, ((0, 0), (0, header.shape[1] - strip.shape[1]), (0, 0)), constant_values=255)
        strips.append(np.concatenate([header, strip], axis=0))
    if not strips:
        return
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
    cv2.imwrite(str(path), np.concatenate(strips, axis=0))
