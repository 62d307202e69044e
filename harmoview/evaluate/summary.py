"""The numbers of an evaluation: which per-case scores are averaged, and the overall summary.

Shared by the runner (which fills the per-case scores and writes ``summary.json``) and the HTML page
(which shows the same scores per case).
"""

from __future__ import annotations

import numpy as np

#: per-case scores averaged into summary.json (over the cases where they are not None)
SUMMARY_METRICS = ("facesim", "facesim_multiview", "detection_rate", "yaw_in_range_rate", "motion_px", "text_alignment")


def merge_bins(per_identity: list[dict]) -> dict:
    """Yaw-bin breakdown over all identities of a case: frame-weighted mean multi-view FaceSim per bin."""
    sums: dict[str, list[float]] = {}
    for scores in per_identity:
        for view, entry in scores["by_yaw_bin"].items():
            acc = sums.setdefault(view, [0.0, 0])
            acc[0] += entry["facesim_multiview"] * entry["num_frames"]
            acc[1] += entry["num_frames"]
    return {view: {"facesim_multiview": s / n, "num_frames": n} for view, (s, n) in sums.items()}


def summarize(results: list[dict], models: dict) -> dict:
    """Overall scores: each metric's mean over the cases where it has a value, with that count."""
    means = {}
    for name in SUMMARY_METRICS:
        values = [r[name] for r in results if r.get(name) is not None]
        means[name] = {"mean": float(np.mean(values)) if values else None, "num_cases": len(values)}
    bins: dict[str, list[float]] = {}
    for r in results:
        for view, entry in (r.get("facesim_by_yaw_bin") or {}).items():
            bins.setdefault(view, []).append(entry["facesim_multiview"])
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "num_cases": len(results),
        "statuses": statuses,
        "metrics": means,
        "facesim_multiview_by_yaw_bin": {v: {"mean": float(np.mean(s)), "num_cases": len(s)} for v, s in bins.items()},
        **models,
    }
