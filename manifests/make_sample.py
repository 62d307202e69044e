"""Regenerate ``manifests/sample/``: a tiny real run over two of the shared videos.

    python manifests/make_sample.py

The sample is a real ``datakit build`` output (default face stack), minus the internal ``_stage``, ``_attempts`` and
``_done`` folders, small enough to commit and to read in a notebook without running anything.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
VIDEOS = ("cisco_two_people.mp4", "single_face.mp4", "zhling_720p.mp4")


def main() -> None:
    from datakit import BuildConfig
    from pipelines import build

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "videos"
        src.mkdir()
        for name in VIDEOS:
            (src / name).symlink_to(SHARED / "media" / "videos" / name)
        out = Path(tmp) / "run"
        summary = build(BuildConfig(src=src, out=out, models_dir=SHARED / "models", workers=2), progress=False)
        target = HERE / "sample"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(out, target, ignore=shutil.ignore_patterns("_stage", "_done", "_attempts", ".*"))
    print(summary.format())


if __name__ == "__main__":
    main()
