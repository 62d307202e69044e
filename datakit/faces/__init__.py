"""The face stack: build a detector + head-pose + identity-embedder combination by name.

``build_face_stack("auto")`` gives the default stack (YuNet + FSA-Net + dlib ResNet) when its model files
are in the models directory and intact, else the pip-only fallback (dlib HOG + 68-landmark PnP pose +
dlib ResNet), which cannot see profile faces; ``FaceStack.notes`` says which ran and why.
"""

from __future__ import annotations

import os
from pathlib import Path

from datakit.faces.base import DETECT_MAX_SIDE, Face, FaceStack, ModelNotFoundError
from datakit.faces.model_files import (
    DEFAULT_STACK_FILES,
    FSANET_FILES,
    INSIGHTFACE_PACK_ENV,
    MODELS_DIR_HINT,
    YUNET_FILE,
    ModelChecksumError,
    resolve_models_dir,
    verified_model_files,
)

__all__ = ["BACKENDS", "Face", "FaceStack", "ModelChecksumError", "ModelNotFoundError", "build_face_stack"]

BACKENDS = ("auto", "yunet", "dlib", "insightface")


def build_face_stack(
    backend: str = "auto",
    models_dir: str | Path | None = None,
    insightface_pack: str | Path | None = None,
    det_threshold: float | None = None,
    detect_max_side: int = DETECT_MAX_SIDE,
) -> FaceStack:
    """Load a face stack.

    Args:
        backend: ``"auto"`` (default stack when its files are present, else the dlib fallback),
            ``"yunet"`` (YuNet + FSA-Net + dlib; raises when the files are missing or corrupt), ``"dlib"``
            (the pip-only fallback) or ``"insightface"`` (a local insightface model pack).
        models_dir: folder with the default stack's ONNX files (and optionally ``SHA256SUMS``); defaults to
            ``$DATAKIT_MODELS_DIR``, else the per-user folder of ``datakit models fetch``.
        insightface_pack: a local insightface pack folder (e.g. ``.../buffalo_l``); defaults to
            ``$DATAKIT_INSIGHTFACE_PACK``.
        det_threshold: detector score threshold (0..1); each detector has its own default.
        detect_max_side: the detector sees the frame shrunk to this long side (px; 0 = full size); boxes
            and landmarks come back in frame pixels. The insightface detector keeps its own 640 px
            ``det_size``, already below the default.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown face backend {backend!r}; choose one of {BACKENDS}")
    resolved_dir = resolve_models_dir(models_dir)
    if backend == "insightface":
        from datakit.faces.insightface_stack import build_insightface_stack

        pack = insightface_pack if insightface_pack is not None else os.environ.get(INSIGHTFACE_PACK_ENV)
        return build_insightface_stack(pack, resolved_dir, det_threshold)
    if backend == "dlib":
        return _dlib_stack(
            det_threshold, detect_max_side, notes=["pip-only fallback chosen explicitly (backend='dlib')"]
        )
    try:
        paths = verified_model_files(resolved_dir, DEFAULT_STACK_FILES)
    except ModelNotFoundError as error:
        if backend == "yunet":
            raise
        return _dlib_stack(det_threshold, detect_max_side, notes=[f"default stack unavailable: {error}"])
    return _yunet_stack(paths, det_threshold, detect_max_side)


def _yunet_stack(paths: dict[str, Path], det_threshold: float | None, detect_max_side: int) -> FaceStack:
    from datakit.faces.dlib_embed import DlibEmbedder
    from datakit.faces.fsanet import FSANetPose
    from datakit.faces.yunet import YUNET_SCORE_THRESHOLD, YuNetDetector

    threshold = YUNET_SCORE_THRESHOLD if det_threshold is None else det_threshold
    detector = YuNetDetector(paths[YUNET_FILE], score_threshold=threshold, max_side=detect_max_side)
    pose = FSANetPose(tuple(paths[name] for name in FSANET_FILES))
    return FaceStack(name="yunet+fsanet+dlib", detector=detector, pose=pose, embedder=DlibEmbedder())


def _dlib_stack(det_threshold: float | None, detect_max_side: int, notes: list[str]) -> FaceStack:
    from datakit.faces.dlib_embed import DlibEmbedder
    from datakit.faces.dlib_fallback import HogDetector, Landmark68Pose

    notes = [
        *notes,
        "running the pip-only fallback stack dlib-hog+dlib68+dlib: the HOG detector only finds frontal and"
        " near-frontal faces, so profile faces are missed and no *_profile views are produced; "
        f"for the YuNet + FSA-Net stack {MODELS_DIR_HINT}",
    ]
    detector = HogDetector(det_threshold=0.5 if det_threshold is None else det_threshold, max_side=detect_max_side)
    return FaceStack(
        name="dlib-hog+dlib68+dlib", detector=detector, pose=Landmark68Pose(), embedder=DlibEmbedder(), notes=notes
    )
