"""`harmoview evaluate` as an API: score every case's video, write per-case and overall JSON and the HTML page.

Videos are matched to cases by file name, ``<videos>/<case_id>.mp4``. Output folder::

    summary.json          means over the cases that have a value, counts, the models used
    cases/<case_id>.json  every score of one case, per identity and per sampled frame
    index.html            one row per case: references, sampled frames, scores (images in images/)
    overview.png          the same rows as one image, for a quick look without a browser
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harmoview.evaluate.cases import Case, read_cases
from harmoview.evaluate.frames import SampledFrame, motion_px, sample_frames
from harmoview.evaluate.html import write_report
from harmoview.evaluate.metrics import ReferenceError, embed_identity, face_metrics, yaw_in_range_rate
from harmoview.evaluate.summary import SUMMARY_METRICS, merge_bins, summarize


@dataclass(kw_only=True, slots=True)
class EvalConfig:
    """How videos are sampled and which models score them."""

    sample_fps: float = 4.0  #: frames scored per second of video (OpenS2V-Eval samples a few per second)
    max_frames: int = 64  #: at most this many frames per video
    models_dir: Path | None = None  #: the default face stack's files (default: $DATAKIT_MODELS_DIR)
    insightface_pack: Path | None = None  #: an insightface pack (ArcFace): FaceSim-Arc instead of the dlib embedder
    clip: Path | None = None  #: an open_clip folder for text alignment; None = not measured
    num_preview_frames: int = 4  #: sampled frames shown per case on the HTML page


class Evaluator:
    """Loads the face stack (and CLIP when configured) once, then scores any number of cases."""

    def __init__(self, config: EvalConfig) -> None:
        from datakit.faces import build_face_stack

        self.config = config
        if config.insightface_pack is not None:
            self.stack = build_face_stack("insightface", config.models_dir, insightface_pack=config.insightface_pack)
        else:
            self.stack = build_face_stack("yunet", config.models_dir)
        self.clip = None
        if config.clip is not None:
            from harmoview.evaluate.text import ClipScorer

            self.clip = ClipScorer(config.clip)

    def describe(self) -> dict:
        """The models that produced the scores (for summary.json)."""
        return {"face_stack": self.stack.describe(), "clip": None if self.clip is None else self.clip.name}

    def score(self, case: Case, video: Path, root: Path) -> tuple[dict, list[SampledFrame]]:
        """Scores of one case's video (``root``: the case file's folder) and the frames that were sampled."""
        result = {"case_id": case.case_id, "prompt": case.prompt, "video": str(video), "status": "ok", "error": None}
        result.update(dict.fromkeys(SUMMARY_METRICS))
        if not video.is_file():
            return {**result, "status": "missing_video", "error": f"no video {video}"}, []
        try:
            identities = [
                embed_identity(self.stack, ident.identity_id, paths)
                for ident, paths in zip(case.identities, case.reference_paths(root), strict=True)
            ]
        except ReferenceError as error:
            return {**result, "status": "bad_reference", "error": str(error)}, []
        samples = sample_frames(video, self.config.sample_fps, self.config.max_frames)
        if not samples:
            return {**result, "status": "unreadable_video", "error": f"no frames decoded from {video}"}, []
        faces = face_metrics(self.stack, samples, identities)
        if case.expected_yaw_deg is not None:
            rates = [yaw_in_range_rate(s, case.expected_yaw_deg) for s in faces["identities"]]
            rates = [r for r in rates if r is not None]
            result["yaw_in_range_rate"] = float(np.mean(rates)) if rates else None
        result["motion_px"] = motion_px(samples)
        if self.clip is not None:
            result["text_alignment"] = self.clip.score(case.prompt, [s.bgr for s in samples])
        result.update(faces)
        result["facesim_by_yaw_bin"] = merge_bins(faces["identities"])
        return result, samples


def evaluate(cases_path: str | Path, videos: str | Path, out: str | Path, config: EvalConfig | None = None) -> dict:
    """Score ``<videos>/<case_id>.mp4`` for every case of ``cases_path``; writes ``out``; returns the summary."""
    config = config or EvalConfig()
    cases_path, videos, out = Path(cases_path), Path(videos), Path(out)
    cases = read_cases(cases_path)
    evaluator = Evaluator(config)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    results, rows = [], []
    start = time.perf_counter()
    for case in cases:
        result, samples = evaluator.score(case, videos / f"{case.case_id}.mp4", cases_path.parent)
        (out / "cases" / f"{case.case_id}.json").write_text(json.dumps(result, indent=2))
        results.append(result)
        rows.append((case, result, samples))
    summary = summarize(results, evaluator.describe())
    summary["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    summary["elapsed_s"] = round(time.perf_counter() - start, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(rows, summary, cases_path.parent, out, config.num_preview_frames)
    return summary
