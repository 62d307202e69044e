"""``datakit leakage``: does any benchmark face match a person of the training manifests?

The benchmark is a folder of photos (searched recursively) or a harmoview case file (JSONL, the format of
``harmoview.evaluate.cases``: each line's ``identities[].references`` maps a view to an image path,
relative to the case file's folder). Every face of every image is embedded with the training run's face
stack and searched with :class:`datakit.tools.query.Index` (identity centroids and tracks); a match at or above
the threshold (default: the embedder's ``same_person_cosine``) is a leak, reported with the matched
clips. Images in which no face is found cannot be checked and are listed apart.

Only the reference paths of a case file are read here (plain JSON), so datakit does not import harmoview.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from datakit.tools.photos import IMAGE_SUFFIXES, NoFaceError, embed_photo
from datakit.tools.query import Index, Match, face_stack_for

__all__ = ["LeakageReport", "benchmark_images", "check_leakage"]


@dataclass(slots=True)
class Leak:
    """One benchmark face that matches a training identity (or an unlinked training track)."""

    image: str
    face: int
    context: list[dict]  # where the image is used: [{case_id, identity_id, view}] for a case file
    match: Match

    def to_dict(self) -> dict:
        """JSON-able form: the benchmark face, where it is used, and the match."""
        return {"image": self.image, "face": self.face, "used_by": self.context, **self.match.to_dict()}


@dataclass(slots=True)
class LeakageReport:
    """What :func:`check_leakage` found: the faces checked, the leaks, and what could not be checked."""

    threshold: float
    images: int = 0
    faces: int = 0
    leaks: list[Leak] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    not_embedded: list[str] = field(default_factory=list)

    @property
    def leaked(self) -> bool:
        """Whether any benchmark face matches the training data (``datakit leakage`` then exits 1)."""
        return bool(self.leaks)

    def to_dict(self) -> dict:
        """JSON-able form, as ``datakit leakage --json`` prints it."""
        return {
            "threshold": self.threshold,
            "images": self.images,
            "faces": self.faces,
            "leaked": self.leaked,
            "leaks": [leak.to_dict() for leak in self.leaks],
            "no_face": self.no_face,
            "not_embedded": self.not_embedded,
        }

    def format(self) -> str:
        """The readable report of ``datakit leakage``."""
        lines = [f"checked {self.faces} face(s) in {self.images} image(s) at threshold {self.threshold:.3f}"]
        if self.no_face:
            lines.append(
                f"  {len(self.no_face)} image(s) without a detectable face (not checked): "
                + ", ".join(self.no_face[:10])
                + (" ..." if len(self.no_face) > 10 else "")
            )
        if self.not_embedded:
            lines.append(f"  {len(self.not_embedded)} face(s) the embedder could not embed (not checked)")
        if not self.leaks:
            lines.append("no leakage: no benchmark face matches a training identity above the threshold")
            return "\n".join(lines)
        lines.append(f"LEAKAGE: {len(self.leaks)} benchmark face(s) match training data")
        for leak in self.leaks:
            m = leak.match
            who = m.identity_id or f"track {m.track_id} (outside every identity)"
            used = "; ".join(f"case {c['case_id']} identity {c['identity_id']} view {c['view']}" for c in leak.context)
            lines.append(
                f"  {leak.image} face {leak.face} -> {who} score {m.score:.3f}" + (f"  [{used}]" if used else "")
            )
            for c in m.clips:
                lines.append(f"      {c.clip_id}  {c.video_path}  {c.start_s:.2f}-{c.end_s:.2f} s")
        return "\n".join(lines)


def benchmark_images(source: str | Path) -> dict[Path, list[dict]]:
    """The images of a benchmark, each with where it is used (empty for a plain folder), in a stable order."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no image ({', '.join(IMAGE_SUFFIXES)}) under {source}")
        return {p: [] for p in files}
    if not source.is_file():
        raise FileNotFoundError(f"{source} is neither a folder of images nor a case file")
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return {source: []}
    out: dict[Path, list[dict]] = {}
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
            refs = [
                (i["identity_id"], view, path) for i in case["identities"] for view, path in i["references"].items()
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{source}:{number}: not a harmoview case line ({exc})") from None
        for identity_id, view, path in refs:
            p = Path(path) if Path(path).is_absolute() else source.parent / path
            out.setdefault(p, []).append({"case_id": case.get("case_id"), "identity_id": identity_id, "view": view})
    if not out:
        raise ValueError(f"{source}: no reference images in the case file")
    return out


def check_leakage(
    index: Index,
    source: str | Path,
    *,
    threshold: float | None = None,
    k: int = 5,
    models_dir: str | Path | None = None,
    insightface_pack: str | Path | None = None,
) -> LeakageReport:
    """Search every face of the benchmark's images in ``index`` (the training runs)."""
    threshold = index.same_person_cosine if threshold is None else float(threshold)
    images = benchmark_images(source)
    stack = face_stack_for(index, models_dir=models_dir, insightface_pack=insightface_pack)
    report = LeakageReport(threshold=threshold)
    for path, context in images.items():
        report.images += 1
        try:
            faces = embed_photo(path, stack)
        except NoFaceError:
            report.no_face.append(str(path))
            continue
        for pf in faces:
            report.faces += 1
            if pf.embedding is None:
                report.not_embedded.append(f"{path} face {pf.face}")
                continue
            for m in index.search(pf.embedding, k=k, min_score=threshold):
                m.query = pf.describe()
                report.leaks.append(Leak(image=str(path), face=pf.face, context=context, match=m))
    return report
