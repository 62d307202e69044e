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

#: ArcFace (insightface recognition models) same-person cosine. No recognition pack is available offline
#: here, so it is taken from published operating points, not measured: 0.28 is ArcFace's threshold at
#: FAR = 0.1% on LFW (Deb et al., AdvFaces, github.com/ronny3050/AdvFaces issue #7); py-feat measured
#: buffalo_l's w600k_r50 at most 0.35 between five different people (cosanlab/py-feat PR #284); users
#: of insightface report 0.4-0.5 as conservative (deepinsight/insightface issue #168). 0.35 sits in the
#: commonly used 0.3-0.4 band, on the strict side of the FAR 0.1% point.
ARCFACE_SAME_PERSON_COSINE = 0.35
#: ArcFace eligibility (provisional, to be calibrated): 112 px chips, margin-trained on pose-varied data.
ARCFACE_MIN_EMBED_PX = 40.0
ARCFACE_MAX_EMBED_YAW_DEG = 75.0
PACK_HINT = f"pass --insightface-pack or set {INSIGHTFACE_PACK_ENV} to a local pack folder (e.g. buffalo_l)"


class InsightFaceDetector:
    """The pack's detector (SCRFD / RetinaFace) through ``FaceAnalysis.get``: box, score, 5 keypoints.

    insightface's 5 keypoints are ordered like YuNet's (the eye on the image left first), i.e. our order.
    When the pack has ``landmark_3d_68`` (1k3d68), its 68 points go to ``extra["landmarks68"]``.
    """

    sees_profiles = True

    def __init__(self, app, pack_name: str) -> None:
        self._app = app
        self.name = f"insightface:{pack_name}:{type(app.det_model).__name__.lower()}"

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """Faces in one BGR frame, best score first."""
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
    app = _load_app(pack_dir, det_threshold)
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
        name=name, detector=InsightFaceDetector(app, pack_dir.name), pose=pose, embedder=embedder, notes=notes
    )


def _load_app(pack_dir: Path, det_threshold: float | None):
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
    app.prepare(ctx_id=-1, det_thresh=0.5 if det_threshold is None else det_threshold, det_size=(640, 640))
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
