"""Assemble benchmark cases from a datakit run: the identities held out of training become the benchmark.

Per chosen identity, the references are its best crop (rank 0) of every view in ``reference_views``,
written as JPEG files beside the case file; the prompt is a caption of one of its clips when the run has
captions, else a neutral default.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow.compute as pc

from datakit.schema import VIEWS
from datakit.store import RunDir
from harmoview.evaluate.cases import Case, CaseFileError, CaseIdentity, write_cases

DEFAULT_PROMPT = "A person talks to the camera, turning their head naturally, in a well-lit room."


def read_identity_list(path: str | Path) -> list[str]:
    """Identity ids, one per line (blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise CaseFileError(f"{path}: identity list not found")
    ids = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise CaseFileError(f"{path}: no identity ids")
    return list(dict.fromkeys(ids))


def _captions_by_identity(run: RunDir) -> dict[str, list[tuple[str, str | None]]]:
    """identity_id -> [(clip_id, caption)] in clip order, from the tracks and clips tables."""
    tracks = run.read("tracks").select(["identity_id", "clip_id"]).to_pylist()
    captions = {r["clip_id"]: r["caption"] for r in run.read("clips").select(["clip_id", "caption"]).to_pylist()}
    clips: dict[str, dict[str, None]] = {}  # identity -> clip ids, ordered, without repeats
    for row in sorted(tracks, key=lambda r: r["clip_id"]):
        clips.setdefault(row["identity_id"], {})[row["clip_id"]] = None
    return {identity: [(c, captions.get(c)) for c in ids] for identity, ids in clips.items()}


def cases_from_run(
    manifests: str | Path,
    identity_ids: list[str],
    out: str | Path,
    images_dir: str | Path | None = None,
    *,
    per_clip: bool = False,
    default_prompt: str = DEFAULT_PROMPT,
) -> list[Case]:
    """Write a case file ``out`` for ``identity_ids`` of the datakit run ``manifests``; returns the cases.

    One case per identity, or with ``per_clip`` one per (identity, clip) so each clip's caption is a
    prompt. Reference images go to ``images_dir`` (default: ``references/`` beside ``out``).
    """
    run, out = RunDir(manifests), Path(out)
    images = Path(images_dir) if images_dir is not None else out.parent / "references"
    refs = run.read("reference_views")
    refs = refs.filter(pc.equal(refs["rank"], 0)).select(["identity_id", "view", "crop"]).to_pylist()
    by_identity: dict[str, dict[str, bytes]] = {}
    for row in refs:
        by_identity.setdefault(row["identity_id"], {})[row["view"]] = row["crop"]
    missing = [i for i in identity_ids if i not in by_identity]
    if missing:
        raise CaseFileError(f"{manifests}: no reference views for identities {', '.join(missing)}")
    clips = _captions_by_identity(run)
    cases = []
    for identity_id in identity_ids:
        identity = CaseIdentity(identity_id, _write_references(by_identity[identity_id], identity_id, images, out))
        captioned = [(clip_id, caption) for clip_id, caption in clips.get(identity_id, []) if caption]
        if per_clip:
            for clip_id, caption in clips.get(identity_id, []):
                prompt = caption or default_prompt
                cases.append(Case(f"{identity_id}__{clip_id}", prompt, [identity], extra={"clip_id": clip_id}))
        else:
            prompt = captioned[0][1] if captioned else default_prompt
            cases.append(Case(identity_id, prompt, [identity]))
    write_cases(cases, out)
    return cases


def _write_references(crops: dict[str, bytes], identity_id: str, images: Path, out: Path) -> dict[str, str]:
    """Write one identity's crops as ``id_<hash of identity_id>_<view>.jpg``; returns view -> path relative to
    the case file. The name is a hash, never the id itself: a crafted run's id (``../../x``) names no path."""
    images.mkdir(parents=True, exist_ok=True)
    stem = "id_" + hashlib.sha256(identity_id.encode()).hexdigest()[:16]
    paths = {}
    for view in VIEWS:
        if view in crops:
            path = images / f"{stem}_{view}.jpg"
            path.write_bytes(crops[view])
            paths[view] = os.path.relpath(path.resolve(), out.parent.resolve())
    return paths
