"""Runs datakit's steps on Ray: ``build`` (per-video stage, global passes, per-clip stages) and the
whole-run commands that re-run one stage (``caption_run``, ``refilter``).

    from datakit import BuildConfig
    from pipelines import build
    summary = build(BuildConfig(src="videos/", out="runs/demo"))
"""

from pipelines.build import build
from pipelines.clip_stages import caption_run, refilter

__all__ = ["build", "caption_run", "refilter"]
