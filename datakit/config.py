"""Configuration of a ``datakit build`` run: plain dataclasses, loadable from a JSON or TOML file."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from datakit.views import ViewBins


@dataclass(kw_only=True, slots=True)
class BuildConfig:
    """Everything a build needs; the CLI flags map onto these fields one to one."""

    src: Path  #: folder of raw footage, searched recursively
    out: Path  #: run directory: one sub-directory of Parquet files per manifest table
    sample_fps: float = 3.0  #: frames per second given to the face detector (shots see every frame)
    workers: int | None = None  #: per-video Ray actors; None = one per available CPU
    address: str | None = None  #: Ray cluster address; None = RAY_ADDRESS, else a local Ray started here
    models_dir: Path | None = None  #: YuNet/FSA-Net folder; None = $DATAKIT_MODELS_DIR, else the user cache
    backend: str = "auto"  #: face stack: auto | yunet | dlib | insightface
    insightface_pack: Path | None = None  #: local insightface pack (buffalo_l, ...); $DATAKIT_INSIGHTFACE_PACK
    det_threshold: float | None = None  #: detector score threshold; None = the backend's default
    #: the detector sees each frame shrunk to this long side (px; 0 = full size): YuNet at 4K finds two or
    #: three phantom boxes for one large face. insightface keeps its own 640 px det_size.
    detect_max_side: int = 960
    min_face_px: float = 24.0  #: faces smaller than this (sqrt of box area) are ignored
    shot_threshold: float = 27.0  #: PySceneDetect content-detector threshold
    min_shot_s: float = 0.5  #: a cut closer than this to the previous one is ignored
    max_clip_s: float = 10.0  #: longer shots are split into clips of at most this length
    track_iou: float = 0.3  #: box IoU (with the last or the predicted box) that is enough to continue a track
    track_max_gap_s: float = 1.0  #: a track ends after this long without a matching face
    # --- tracking continuity (datakit/tracking.py) ---
    #: detections scoring between this and det_threshold may extend a live track, never start one (else they
    #: are dropped); None = the detector's own low threshold (YuNet 0.5, dlib HOG 0.4, SCRFD 0.3)
    track_low_score: float | None = None
    track_max_shift: float = 1.5  #: largest face-centre move between two samples, in face sizes (see tracking)
    track_max_scale: float = 1.6  #: largest face-size change factor between two linked detections
    # --- end tracking continuity ---
    #: smaller faces are tracked but not embedded: the embedder sees 150 px chips, and chips upsampled
    #: from tiny faces collapse towards one "blurry face" (measured with dlib: different people of
    #: 50-67 px at cosine 0.93-0.96, above its 0.91 operating point)
    #: None = the embedder's calibrated value (dlib: 80 px)
    min_embed_px: float | None = None
    #: faces turned further than this are not embedded (profiles embed poorly, they join through tracks);
    #: None = the embedder's calibrated value (dlib: 45 deg)
    max_embed_yaw_deg: float | None = None
    embed_per_track: int = 4  #: faces embedded per track (the best by quality); embedding dominates cost
    crops_per_track_view: int = 2  #: candidate reference crops kept per track and view bin
    references_per_view: int = 4  #: reference faces kept per identity and view bin
    # --- reference crops and diversity (datakit/references.py) ---
    #: long side (px) of a reference crop (head box grown 1.6x); smaller when the source is smaller (never upscaled)
    crop_max_side: int = 512
    #: a track's candidate crops in one view bin are at least this far apart in time (the best crop, then the
    #: best one this far from it, ...): two faces of one track fall to the near-duplicate threshold at a
    #: median ~2 s apart on the shipped footage
    crop_min_gap_s: float = 2.0
    #: two crops of one (identity, view) whose 32x32 gray thumbnails correlate at least this much (normalised
    #: cross-correlation) are near-duplicates and give one reference; see datakit/references.py for the numbers
    near_duplicate_ncc: float = 0.80
    # --- end reference crops and diversity ---
    # --- track gates (datakit/gates.py): applied in the global pass, so changing one re-runs no model ---
    #: a track's best detector score must reach this; None = the detector's own ``confident_score``
    gate_min_det_score: float | None = None
    gate_min_face_px: float = 40.0  #: a track's median face size (px) must reach this
    #: a track's median sharpness must reach this (non-face blobs measured 1-6, usable faces >= 17)
    gate_min_sharpness: float = 10.0
    gate_min_landmark_ok: float = 0.5  #: least share of a track's faces with a face-like landmark layout
    # --- end track gates ---
    same_person_cosine: float | None = None  #: identity threshold; None = the embedder's calibrated value
    min_sample_s: float = 0.0  #: clips shorter than this make no training sample
    view_bins: ViewBins = field(default_factory=ViewBins)
    overwrite: bool = False  #: start over instead of resuming

    def __post_init__(self) -> None:
        self.src, self.out = Path(self.src), Path(self.out)
        if self.models_dir is None and os.environ.get("DATAKIT_MODELS_DIR"):
            self.models_dir = Path(os.environ["DATAKIT_MODELS_DIR"])
        if self.insightface_pack is None and os.environ.get("DATAKIT_INSIGHTFACE_PACK"):
            self.insightface_pack = Path(os.environ["DATAKIT_INSIGHTFACE_PACK"])
        if self.sample_fps <= 0:
            raise ValueError("sample_fps must be positive")
        if self.detect_max_side < 0:
            raise ValueError("detect_max_side must be >= 0 (0 = detect at full frame size)")
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be >= 1")

    def to_dict(self) -> dict:
        """JSON-able form, as recorded in run.json."""
        out = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}

    @classmethod
    def from_file(cls, path: str | Path, **overrides: object) -> BuildConfig:
        """Load a JSON or TOML file of field values; ``overrides`` (non-None) win."""
        path = Path(path)
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        if isinstance(data.get("view_bins"), dict):
            data["view_bins"] = ViewBins(**data["view_bins"])
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
