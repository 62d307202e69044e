"""The insightface backend: a local model pack (buffalo_l, antelopev2, ...) behind our interfaces.

``FaceAnalysis`` resolves ``name`` to ``<root>/models/<name>`` (insightface 0.7: ``os.path.join(root,
"models", name)``, downloading when absent; 2.x: ``name`` is used directly when it is a directory). We
pass the pack's absolute path as ``name``: ``os.path.join`` returns an absolute last part unchanged, so
both versions load the user's folder in place, nothing is copied and nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datakit.faces.base import Face, FaceStack, ModelNotFoundError
from datakit.faces.model_files import FSANET_FILES, INSIGHTFACE_PACK_ENV, verified_model_files

#: ArcFace (insightface recognition models) same-person cosine, measured on real faces rather than taken from
#: published operating points (0.28 at FAR 0.1% on LFW; 0.3-0.4 used in practice). benchmarks/
#: calibrate_embedders.py, 2026-12-01, with the real int8 MobileFaceNet pack in ../shared/models
#: (insightface_sc_int8), SCRFD boxes, FSA-Net yaw, 395 labelled faces of 13 people (stills at full size and
#: shrunk to 32-64 px, the shipped videos), track-level means as the linker sees them, faces >= 24 px and
#: |yaw| <= 75 deg: different people at most 0.314 (two women of the Hamilton audience, both turned 58-75 deg;
#: frontal pairs at most 0.25); the same person across sources 0.378-0.97, the low end being Barack Obama's
#: ~70 deg audience face against his frontal stills (0.38-0.46). 0.36 sits in that gap (0.314 .. 0.378),
#: leaning away from the different-people side: a bigger corpus holds many more pairs of different people.
#: Full profiles (75+ deg) against frontal faces score 0.13-0.31: they join through their tracks only.
ARCFACE_SAME_PERSON_COSINE = 0.36
#: ArcFace eligibility, same calibration: shrunk stills of 24-40 px still score 0.35-0.94 with their own
#: person and at most 0.22 with others, but video faces that small are blurrier than shrunk stills, so the
#: floor keeps a margin at 32 px. Up to 75 deg the same person stays above the threshold in 99% of track
#: pairs; beyond it (full profiles) same-person scores fall to 0.13-0.31, inside the different-people range.
ARCFACE_MIN_EMBED_PX = 32.0
ARCFACE_MAX_EMBED_YAW_DEG = 75.0
#: SCRFD's own default face threshold, and the lowest score reported for tracking (``detect(min_score=...)``):
#: such faces may only extend a live track (datakit.video.tracking). Measured with the insightface_sc_int8 pack
#: (SCRFD-500M) on Lacamoire's Hamilton close-up: his turned face scores 0.33-0.44 at frames 50-80, so at
#: 0.5 his track ends at frame 40; at 0.3 it runs 20-80 and the other tracks of the shot only gain frames.
SCRFD_SCORE_THRESHOLD = 0.5
SCRFD_LOW_SCORE_THRESHOLD = 0.3
PACK_HINT = f"pass --insightface-pack or set {INSIGHTFACE_PACK_ENV} to a local pack folder (e.g. buffalo_l)"


class InsightFaceDetector:
    """The pack's detector (SCRFD / RetinaFace) through ``FaceAnalysis.get``: box, score, 5 keypoints.

    insightface's 5 keypoints are ordered like YuNet's (the eye on the image left first), i.e. our order.
    When the pack has ``landmark_3d_68`` (1k3d68), its 68 points go to ``extra["landmarks68"]``.
    ``score_threshold`` is the score of a face; ``detect(min_score=...)`` reports weaker detections too, for
    tracking (the pack's detector threshold is set per call; its NMS keeps the higher score).
    """

    sees_profiles = True
    #: SCRFD's faces score 0.7-0.9 on the shipped footage; insightface's own threshold is 0.5 (datakit.passes.gates)
    confident_score = 0.6

    def __init__(self, app, pack_name: str, score_threshold: float = SCRFD_SCORE_THRESHOLD) -> None:
        self._app = app
        self.name = f"insightface:{pack_name}:{type(app.det_model).__name__.lower()}"
        self.score_threshold = score_threshold
        self.low_score_threshold = min(SCRFD_LOW_SCORE_THRESHOLD, score_threshold)

    def detect(self, frame_bgr: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Faces in one BGR frame scoring at least ``min_score`` (default: ``score_threshold``), best first."""
        self._app.det_model.det_thresh = self.score_threshold if min_score is None else min_score
        faces = []
        for found in self._app.get(frame_bgr):
            x0, y0, x1, y1 = (float(v) for v in found.bbox[:4])
            face = Face(bbox=(x0, y0, x1, y1), det_score=float(found.det_score))
            if found.kps is not None:
                face.landmarks = np.asarray(found.kps, np.float32).reshape(5, 2)
            points68 = found.get("landmark_3d_68")
            if points68 is not None:
                face.extra["landmarks68"] = np.asarray(points68, np.float32)[:, :2]
            faces.append(face)
        faces.sort(key=lambda face: -face.det_score)
        return faces


class ArcFaceEmbedder:
    """The pack's recognition model (ArcFace) on 112x112 ``norm_crop`` chips (BGR), L2-normalised."""

    same_person_cosine = ARCFACE_SAME_PERSON_COSINE
    min_embed_px = ARCFACE_MIN_EMBED_PX
    max_embed_yaw_deg = ARCFACE_MAX_EMBED_YAW_DEG

    def __init__(self, model, pack_name: str) -> None:
        self._model = model
        self.name = f"insightface:{pack_name}:arcface"
        self.dim = int(model.output_shape[-1])

    def chip(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray:
        """The 5-point aligned chip ArcFace was trained on."""
        from insightface.utils import face_align

        if face.landmarks is None:
            raise ValueError("ArcFace alignment needs the 5 landmarks")
        return face_align.norm_crop(frame_bgr, landmark=face.landmarks, image_size=self._model.input_size[0])

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 unit-length embeddings."""
        if not chips:
            return np.zeros((0, self.dim), np.float32)
        features = np.asarray(self._model.get_feat(list(chips)), np.float32)  # (N, dim)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


class NoPose:
    """Leaves the pose unknown (views are then None)."""

    name = "none"

    def estimate(self, frame_bgr: np.ndarray, faces: list[Face]) -> None:
        """Nothing to do: yaw/pitch/roll stay None."""


def build_insightface_stack(pack: str | Path | None, models_dir: Path | None, det_threshold: float | None) -> FaceStack:
    """A face stack from a local insightface pack; missing parts fall back to ours, with notes."""
    if pack is None:
        raise ModelNotFoundError(f"the insightface backend needs a model pack: {PACK_HINT}")
    pack_dir = Path(pack).expanduser().resolve()
    if not pack_dir.is_dir() or not any(pack_dir.glob("*.onnx")):
        raise ModelNotFoundError(f"no insightface pack (*.onnx files) at {pack_dir}: {PACK_HINT}")
    threshold = SCRFD_SCORE_THRESHOLD if det_threshold is None else det_threshold
    app = _load_app(pack_dir, threshold)
    notes: list[str] = []
    recognition = app.models.pop("recognition", None)  # embedded later, in batches, on chosen faces only
    if recognition is not None:
        embedder = ArcFaceEmbedder(recognition, pack_dir.name)
    else:
        from datakit.faces.dlib_embed import DlibEmbedder

        embedder = DlibEmbedder()
        notes.append(f"insightface pack {pack_dir.name} has no recognition model: using the dlib embedder")
    pose = _pose_for(app, models_dir, notes)
    name = f"insightface:{pack_dir.name}+{pose.name}+{embedder.name.split(':')[-1]}"
    return FaceStack(
        name=name,
        detector=InsightFaceDetector(app, pack_dir.name, threshold),
        pose=pose,
        embedder=embedder,
        notes=notes,
    )


def _load_app(pack_dir: Path, det_threshold: float):
    import onnxruntime as ort
    from insightface.app import FaceAnalysis

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    app = FaceAnalysis(
        name=str(pack_dir),
        root=str(pack_dir.parent),
        allowed_modules=["detection", "recognition", "landmark_3d_68"],
        providers=["CPUExecutionProvider"],
        sess_options=options,
    )
    # SCRFD already detects on the frame resized to fit 640x640 (below the default detect_max_side), so
    # no shrinking of ours: the pack's 68-point landmark model then still crops from the full frame.
    # det_thresh is the face threshold; InsightFaceDetector.detect lowers it per call for tracking.
    app.prepare(ctx_id=-1, det_thresh=det_threshold, det_size=(640, 640))
    return app


def _pose_for(app, models_dir: Path | None, notes: list[str]):
    if "landmark_3d_68" in app.models:
        from datakit.faces.dlib_fallback import Landmark68Pose

        # Our PnP on the pack's 68 points, not insightface's own angles: PnP's sign is the one we tested.
        return Landmark68Pose()
    try:
        paths = verified_model_files(models_dir, FSANET_FILES)
    except ModelNotFoundError as error:
        notes.append(
            f"no pose model: the pack has no landmark_3d_68 and FSA-Net is unavailable ({error});"
            " yaw/pitch/roll and views are None"
        )
        return NoPose()
    from datakit.faces.fsanet import FSANetPose

    notes.append("the pack has no landmark_3d_68: head pose from FSA-Net")
    return FSANetPose(tuple(paths[name] for name in FSANET_FILES))
