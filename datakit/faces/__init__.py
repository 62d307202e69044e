"""The face stack: build a detector + head-pose + identity-embedder combination by name.

``build_face_stack("auto")`` takes, in this order (:func:`choose_auto_backend`): an insightface (ArcFace) pack
when one is configured (``--insightface-pack`` / ``$DATAKIT_INSIGHTFACE_PACK``) or was fetched into the models
folder by ``datakit models fetch --pack``, and the ``insightface`` package is installed; else the default stack
(YuNet + FSA-Net + dlib ResNet) when its model files are in the models directory and intact; else the pip-only
fallback (dlib HOG + 68-landmark PnP pose + dlib ResNet), which cannot see profile faces. ``FaceStack.notes``
says which ran and why whenever it is not the plain default stack.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from datakit.faces.base import DETECT_MAX_SIDE, Face, FaceStack, ModelNotFoundError
from datakit.faces.model_files import (
    DEFAULT_STACK_FILES,
    FSANET_FILES,
    INSIGHTFACE_PACK_ENV,
    MODELS_DIR_HINT,
    YUNET_FILE,
    ModelChecksumError,
    find_fetched_pack,
    resolve_models_dir,
    verified_model_files,
)

__all__ = [
    "BACKENDS",
    "AutoChoice",
    "Face",
    "FaceStack",
    "ModelChecksumError",
    "ModelNotFoundError",
    "build_face_stack",
    "choose_auto_backend",
]

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
        backend: ``"auto"`` (an insightface pack when configured or fetched, else the default stack when its
            files are present, else the dlib fallback: :func:`choose_auto_backend`),
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
    notes: list[str] = []
    if backend == "auto":
        choice = choose_auto_backend(resolved_dir, insightface_pack)
        backend, insightface_pack, notes = choice.backend, choice.insightface_pack, list(choice.notes)
        if backend == "insightface":
            notes.insert(0, f"auto took insightface: {choice.reason}")
    if backend == "insightface":
        from datakit.faces.insightface_stack import build_insightface_stack

        pack = insightface_pack if insightface_pack is not None else os.environ.get(INSIGHTFACE_PACK_ENV)
        stack = build_insightface_stack(pack, resolved_dir, det_threshold)
        stack.notes[:0] = notes
        return stack
    if backend == "dlib":
        notes = notes or ["pip-only fallback chosen explicitly (backend='dlib')"]
        return _dlib_stack(det_threshold, detect_max_side, notes=notes)
    paths = verified_model_files(resolved_dir, DEFAULT_STACK_FILES)  # auto chose yunet only if this passes
    stack = _yunet_stack(paths, det_threshold, detect_max_side)
    stack.notes.extend(notes)
    return stack


@dataclass(frozen=True, slots=True)
class AutoChoice:
    """What ``--backend auto`` takes, and why (:func:`choose_auto_backend`)."""

    backend: str  #: "insightface", "yunet" or "dlib"
    insightface_pack: Path | None  #: the pack folder when ``backend == "insightface"``
    reason: str  #: one line: why this backend
    notes: tuple[str, ...] = ()  #: what was passed over on the way, and why


def choose_auto_backend(models_dir: str | Path | None = None, insightface_pack: str | Path | None = None) -> AutoChoice:
    """The backend ``auto`` takes: a configured or fetched insightface pack, else yunet, else dlib.

    A pack is *configured* by ``insightface_pack`` or ``$DATAKIT_INSIGHTFACE_PACK``, *fetched* when
    ``datakit models fetch --pack`` installed one intact into the models folder (a pack copied there by hand
    counts only when named). The ArcFace pack comes first because it links three-quarter views that dlib
    cannot embed (BENCHMARKS.md, "Identity quality"). Pure: loads no model, so a driver can pin its workers
    to the same choice.
    """
    folder = resolve_models_dir(models_dir)
    notes: list[str] = []
    configured = insightface_pack if insightface_pack is not None else os.environ.get(INSIGHTFACE_PACK_ENV) or None
    if configured is not None:
        pack, why = Path(configured).expanduser(), f"--insightface-pack / {INSIGHTFACE_PACK_ENV} names it"
    else:
        pack, why = find_fetched_pack(folder), f"`datakit models fetch --pack` installed it in {folder}"
    if pack is not None:
        if not (pack.is_dir() and any(pack.glob("*.onnx"))):
            notes.append(f"insightface pack {pack} ({why}) holds no *.onnx files: not used")
        elif not _insightface_installed():
            notes.append(f"insightface pack {pack} ({why}) not used: the insightface package is not installed")
        else:
            return AutoChoice("insightface", pack, f"pack {pack.name} at {pack}: {why}", tuple(notes))
    try:
        verified_model_files(folder, DEFAULT_STACK_FILES)
    except ModelNotFoundError as error:
        notes.append(f"default stack unavailable: {error}")
        return AutoChoice("dlib", None, "neither an insightface pack nor the YuNet/FSA-Net files", tuple(notes))
    return AutoChoice("yunet", None, f"YuNet/FSA-Net files intact in {folder}", tuple(notes))


def _insightface_installed() -> bool:
    """Whether the optional ``insightface`` package can be imported (checked without importing it: slow)."""
    return importlib.util.find_spec("insightface") is not None


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
