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
    track_iou: float = 0.3  #: minimum box IoU to continue a track between sampled frames
    track_max_gap_s: float = 1.0  #: a track ends after this long without a matching face
    # --- tracking continuity (datakit/tracking.py) ---
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
    # --- end reference crops and diversity ---
    # --- track gates (datakit/gates.py): applied in the global pass, so changing one re-runs no model ---
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
