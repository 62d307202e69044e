"""Configuration of a ``datakit build`` run: plain dataclasses, loadable from a JSON or TOML file.

Every field is checked when a config is made (from flags, a file, a run's ``run.json`` or
``dataclasses.replace``): its type is its annotation, a number must be finite and inside its range in
:data:`LIMITS`. A bad value is one :class:`ConfigError` naming the field and the value, before any work.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from datakit.store import RunDir
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
    #: the detector sees each frame shrunk to this long side (px; 0 = full size): YuNet at full 4K size finds
    #: two or three phantom boxes for one large face. A frame shrunk by more than half gets a second look at
    #: half size for small faces only (datakit.faces.base). insightface keeps its own 640 px det_size.
    detect_max_side: int = 960
    min_face_px: float = 24.0  #: faces smaller than this (sqrt of box area) are ignored
    shot_threshold: float = 27.0  #: PySceneDetect content-detector threshold
    min_shot_s: float = 0.5  #: a cut closer than this to the previous one is ignored
    max_clip_s: float = 10.0  #: longer shots are split into clips of at most this length
    track_iou: float = 0.3  #: box IoU (with the last or the predicted box) that is enough to continue a track
    track_max_gap_s: float = 1.0  #: a track ends after this long without a matching face
    # --- tracking continuity (datakit/video/tracking.py) ---
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
    # --- reference crops and diversity (datakit/passes/references.py) ---
    #: long side (px) of a reference crop (head box grown 1.6x); smaller when the source is smaller (never upscaled)
    crop_max_side: int = 512
    #: a track's candidate crops in one view bin are at least this far apart in time (the best crop, then the
    #: best one this far from it, ...): two faces of one track fall to the near-duplicate threshold at a
    #: median ~2 s apart on the shipped footage
    crop_min_gap_s: float = 2.0
    #: two crops of one (identity, view) whose 32x32 gray thumbnails correlate at least this much (normalised
    #: cross-correlation) are near-duplicates and give one reference; see datakit/passes/references.py for the numbers
    near_duplicate_ncc: float = 0.80
    # --- end reference crops and diversity ---
    # --- track gates (datakit/passes/gates.py): applied in the global pass, so changing one re-runs no model ---
    #: a track's best detector score must reach this; None = the detector's own ``confident_score``
    gate_min_det_score: float | None = None
    gate_min_face_px: float = 40.0  #: a track's median face size (px) must reach this
    #: a track's median sharpness must reach this (non-face blobs measured 1-6, usable faces >= 17)
    gate_min_sharpness: float = 10.0
    gate_min_landmark_ok: float = 0.5  #: least share of a track's faces with a face-like landmark layout
    # --- end track gates ---
    # --- clip filters (datakit/clips/filters.py) ---
    # Thresholds over the clip quality scores (datakit/video/quality.py), applied in the global pass: a failed
    # clip keeps its drop_reason and makes no sample; changing one re-runs no model (`datakit filter`).
    # None = off. Defaults drop only clearly unusable clips; numbers measured on the shipped footage.
    #: clips shorter than this (s) are dropped (too_short): under two sampled frames at 3 fps, no motion
    #: score, and far below what video models train on; the shipped clips are 0.67-10 s (the shortest are
    #: whole test videos of 0.75 s), so the default keeps them all
    filter_min_duration_s: float | None = 0.5
    #: mean luma (0..1) below this is too dark (too_dark): a black or fade-out clip measures ~0; the darkest
    #: usable shipped clip (a dim stage, hamilton_white_house) measures 0.064, that clip at a quarter of its
    #: light 0.03; talking heads 0.25-0.65
    filter_min_brightness: float | None = 0.03
    #: share of sampled frames with a face below this = no face or a passing glimpse (few_faces); shipped:
    #: clips with a person 0.24-1.0, no_face.mp4 and the face-less half of face_then_noface_hevc.mov 0.0
    filter_min_face_share: float | None = 0.05
    #: the main face's median size (px) must reach this (small_face); off: the track gates already require
    #: 40 px per track (gate_min_face_px); shipped main faces 45-352 px (carphone QCIF 56)
    filter_min_main_face_px: float | None = None
    #: Laplacian variance at 320 px wide below this is blurry (blurry): shipped clips 79-1728 (the lowest a
    #: fast move in hamilton_white_house, QCIF carphone upscaled 93); a Gaussian blur of sigma 1 px brings
    #: a sharp frame to 18-55, of sigma 2 px to 4-11
    filter_min_sharpness: float | None = 15.0
    #: motion (frame widths per second) below this is static (static); off: talking heads measure 0.003-0.03
    #: (obama_weekly_address_2 0.0033) and a frozen frame ~0, too close for a default
    filter_min_motion: float | None = None
    #: motion above this is too much (too_much_motion); off: the Foreman hand-held pan measures 0.10, the
    #: busiest shipped clip, and is usable
    filter_max_motion: float | None = None
    filter_min_aesthetic: float | None = None  #: low_aesthetic; off: the scale depends on the configured head
    filter_min_clip_score: float | None = None  #: low_clip_score; off: the scale depends on the open_clip model
    #: local open_clip folder (open_clip_config.json + open_clip_model.safetensors) for clip_score and the
    #: aesthetic head's image embeddings (datakit.clips.open_clip.ClipScorer); None = those scores stay null
    clip_model_dir: Path | None = None
    #: local .pth/.safetensors aesthetic head over the CLIP image embedding (LAION aesthetic predictor layout)
    aesthetic_head: Path | None = None
    # --- end clip filters ---
    same_person_cosine: float | None = None  #: identity threshold; None = the embedder's calibrated value
    min_sample_s: float = 0.0  #: clips shorter than this make no training sample
    view_bins: ViewBins = field(default_factory=ViewBins)
    # --- captions (datakit/clips/captions) ---
    #: caption backend: none (no captions) | qwen2.5-vl (local checkpoint) | openai (chat-completions server)
    captioner: str = "none"
    caption_model_dir: Path | None = None  #: qwen2.5-vl: local Qwen2-VL/2.5-VL/3-VL checkpoint folder (offline)
    caption_base_url: str | None = None  #: openai: server base URL, e.g. http://host:8000/v1 (vLLM)
    caption_api_model: str | None = None  #: openai: the served model name (recorded as caption_model)
    caption_api_key_env: str = "OPENAI_API_KEY"  #: openai: environment variable holding the API key, if any
    caption_prompt_version: str = "v1"  #: prompt template (datakit/clips/captions/prompts.py), recorded per caption
    caption_frames: int = 8  #: frames sampled evenly from each clip
    caption_max_pixels: int = 448 * 448  #: pixel budget per frame (width * height); frames are shrunk to it
    caption_max_new_tokens: int = 256  #: longest caption, in tokens (greedy decoding)
    caption_batch_size: int = 4  #: clips per model call (qwen2.5-vl) / per stage batch written to disk
    caption_concurrency: int = 8  #: openai: requests in flight at once
    caption_timeout_s: float = 120.0  #: openai: seconds to wait for one answer
    caption_retries: int = 3  #: openai: retries of a timed-out / 429 / 5xx request (exponential backoff)
    caption_retry_backoff_s: float = 1.0  #: openai: first backoff; doubles on each retry
    # --- end captions ---
    # --- long videos (intra-video parallelism) ---
    #: a video longer than this (s, from the probe) is split: a cheap first pass finds its clips, then segments
    #: of whole clips run as separate work items on every worker, with the tables of an unsplit run
    #: (datakit/video/segments.py); None or 0 = never split (one video, one work item)
    segment_min_s: float | None = 180.0
    #: target length (s) of a segment of a long video (segments start at clip starts: a single long shot
    #: splits at its ``max_clip_s`` length splits)
    segment_s: float = 60.0
    # --- end long videos ---
    overwrite: bool = False  #: start over instead of resuming
    # --- within-video consolidation and fragments (datakit/passes/consolidate.py) ---
    #: least set-to-set score (mean face-to-face cosine) for two track chains of one video to be one person;
    #: None = the embedder's calibrated value (consolidate.CONSOLIDATE_COSINE, see BENCHMARKS.md)
    consolidate_cosine: float | None = None
    #: the set-to-set score averages the k best face pairs of two chains; 0 = all pairs (calibrated default)
    consolidate_top_k: int = 0
    #: a track chain (pieces joined across length splits) with fewer faces that joins no group of more
    #: evidence gets drop_reason "fragment"; 0 = never
    fragment_min_faces: int = 3
    # --- end consolidation ---

    def __post_init__(self) -> None:
        _validate(self)  # every field: its annotated type, finite, in its LIMITS range; raises ConfigError
        if self.models_dir is None and os.environ.get("DATAKIT_MODELS_DIR"):
            self.models_dir = Path(os.environ["DATAKIT_MODELS_DIR"])
        if self.insightface_pack is None and os.environ.get("DATAKIT_INSIGHTFACE_PACK"):
            self.insightface_pack = Path(os.environ["DATAKIT_INSIGHTFACE_PACK"])

    def to_dict(self) -> dict:
        """JSON-able form, as recorded in run.json."""
        out = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}

    @classmethod
    def from_file(cls, path: str | Path, **overrides: object) -> BuildConfig:
        """Load a JSON or TOML file of field values; ``overrides`` (non-None) win.

        Raises :class:`ConfigError` naming the file when it is not a JSON/TOML table of known fields."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError, RecursionError) as err:
            reason = "nested too deeply" if isinstance(err, RecursionError) else err
            kind = "TOML" if path.suffix == ".toml" else "JSON"
            raise ConfigError(f"{path}: not a valid {kind} file: {reason}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must hold a table of config fields (got {_shown(data)})")
        unknown = set(data) - _field_names(cls)
        if unknown:
            raise ConfigError(f"{path}: unknown config keys {sorted(unknown)}; known: {sorted(_field_names(cls))}")
        try:
            return cls._from_values(data, overrides)
        except ConfigError as err:
            given = err.field in data and overrides.get(err.field) is None
            raise ConfigError(f"{path}: {err}" if given else str(err), field=err.field) from None

    @classmethod
    def from_run(cls, root: str | Path, **overrides: object) -> BuildConfig:
        """The config a finished or interrupted run was built with (its ``run.json``), ``overrides``
        (non-None) applied; ``out`` is the run folder. Fields unknown to this version are ignored.

        Raises :class:`datakit.store.NotARunError` when ``root`` is not a run, ValueError naming ``run.json``
        when its recorded config is not a valid one, :class:`ConfigError` when an override is bad."""
        run = RunDir.open(root)
        recorded = run.record().get("config", {})
        where = run.root / "run.json"
        if not isinstance(recorded, dict):
            raise ValueError(f"{where}: its config is not a table of fields (got {_shown(recorded)})")
        data = {k: v for k, v in recorded.items() if k in _field_names(cls)}
        try:
            return cls._from_values(data, {**overrides, "out": Path(root), "overwrite": False})
        except ConfigError as err:
            if overrides.get(err.field) is not None:
                raise
            raise ValueError(f"{where}: recorded {err}") from None

    @classmethod
    def _from_values(cls, data: dict, overrides: dict) -> BuildConfig:
        """A config from JSON-like field values (``view_bins`` as a dict) with the non-None ``overrides``."""
        data = dict(data)
        data.update({k: v for k, v in overrides.items() if v is not None})
        for f in fields(cls):
            if f.name not in data and f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"config field {f.name}: missing (it has no default)", field=f.name)
        return cls(**data)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


class ConfigError(ValueError):
    """A config field holds a value of the wrong type or outside its range: a usage error (``datakit``
    exits 2). ``field`` names the field (``view_bins`` for its edges), None for a file that is no config."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Limit:
    """The allowed range of a numeric field (always finite); ``low_open``: ``low`` itself is outside."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        def shown(bound: float) -> str:
            return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"

        if self.low is not None and self.high is not None:
            return f" in [{shown(self.low)}, {shown(self.high)}]"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {shown(self.low)}"
        return ""


ANY, POSITIVE, NON_NEGATIVE, AT_LEAST_ONE = Limit(), Limit(0, low_open=True), Limit(0), Limit(1)
INT_MAX = 2**31 - 1  #: the largest value of any integer field
SHARE, COSINE, DEGREES = Limit(0, 1), Limit(-1, 1), Limit(0, 180)

#: the range of every numeric field of BuildConfig (and of its view-bin edges); types come from the
#: annotations. Detector scores are ANY: dlib's HOG margins are not probabilities. A test keeps it complete.
LIMITS: dict[str, Limit] = {
    **dict.fromkeys(["sample_fps", "shot_threshold", "max_clip_s", "track_max_shift", "segment_s"], POSITIVE),
    **dict.fromkeys(["caption_timeout_s"], POSITIVE),
    **dict.fromkeys(["det_threshold", "track_low_score", "gate_min_det_score"], ANY),
    **dict.fromkeys(["filter_min_aesthetic", "filter_min_clip_score"], ANY),
    **dict.fromkeys(["track_iou", "gate_min_landmark_ok", "filter_min_brightness", "filter_min_face_share"], SHARE),
    **dict.fromkeys(["near_duplicate_ncc", "same_person_cosine", "consolidate_cosine"], COSINE),
    **dict.fromkeys(["max_embed_yaw_deg", "view_bins.frontal_max_deg", "view_bins.profile_min_deg"], DEGREES),
    **dict.fromkeys(["workers", "embed_per_track", "crops_per_track_view", "references_per_view"], AT_LEAST_ONE),
    **dict.fromkeys(["crop_max_side", "caption_frames", "caption_max_pixels", "caption_max_new_tokens"], AT_LEAST_ONE),
    **dict.fromkeys(["caption_batch_size", "caption_concurrency"], AT_LEAST_ONE),
    "track_max_scale": Limit(1),
    **dict.fromkeys(
        [
            "detect_max_side", "min_face_px", "min_shot_s", "track_max_gap_s", "min_embed_px", "crop_min_gap_s",
            "gate_min_face_px", "gate_min_sharpness", "filter_min_duration_s", "filter_min_main_face_px",
            "filter_min_sharpness", "filter_min_motion", "filter_max_motion", "min_sample_s",
            "caption_retries", "caption_retry_backoff_s", "segment_min_s", "consolidate_top_k", "fragment_min_faces",
        ],
        NON_NEGATIVE,
    ),
}  # fmt: skip

_WHAT = {float: "a finite number", int: "an integer", str: "a string", bool: "true or false", Path: "a path"}


@functools.cache
def _kinds() -> dict[str, tuple[type, bool]]:
    """Each field's type and whether it may be None, from the annotations (``float | None`` -> (float, True))."""
    kinds = {}
    for name, hint in typing.get_type_hints(BuildConfig).items():
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds[name] = (next(a for a in args if a is not type(None)), type(None) in args)
    return kinds


def _validate(cfg: BuildConfig) -> None:
    """Check and normalise every field in place (ints to float fields, strings to paths)."""
    for name, (kind, optional) in _kinds().items():
        value = getattr(cfg, name)
        if kind is ViewBins:
            setattr(cfg, name, _view_bins(value))
        else:
            setattr(cfg, name, _checked(name, value, kind, optional))


def _checked(name: str, value: object, kind: type, optional: bool) -> object:
    """``value`` as a ``kind`` (or None when ``optional``); raises :class:`ConfigError` naming ``name``."""
    if value is None and optional:
        return None
    if kind in (int, float) and isinstance(value, int | float) and not isinstance(value, bool):
        number, limit = _as_number(value, kind), LIMITS[name]
        if kind is int:  # counts and pixel sizes: a C int, so that Ray, OpenCV and Arrow take them
            limit = Limit(limit.low, INT_MAX if limit.high is None else min(limit.high, INT_MAX), limit.low_open)
        if number is not None and number in limit:
            return number
        too_large = number is not None and kind is int and abs(number) > INT_MAX
        what = f"{_WHAT[kind]}{limit if too_large else LIMITS[name]}"
    elif kind is Path and isinstance(value, str | os.PathLike) and str(value):
        return Path(value)
    elif kind in (str, bool) and isinstance(value, kind):
        return value
    else:
        what = _WHAT[kind] + (str(LIMITS[name]) if kind in (int, float) else "")  # not a number at all
    null = " or null" if optional else ""
    raise ConfigError(f"config field {name}: must be {what}{null} (got {_shown(value)})", field=name.split(".")[0])


def _as_number(value: int | float, kind: type) -> int | float | None:
    """``value`` as a finite ``kind`` (an integral float is an int: JSON writes 4.0), None when it is none."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if kind is int:
        return value if isinstance(value, int) else int(value) if value.is_integer() else None
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        return None


def _view_bins(value: object) -> ViewBins:
    """The view-bin edges of a ``ViewBins`` or a table of its fields, each in [0, 180] deg, strictly increasing."""
    names = [f.name for f in fields(ViewBins)]
    if isinstance(value, ViewBins):
        value = {name: getattr(value, name) for name in names}
    if not isinstance(value, dict):
        got = _shown(value)
        raise ConfigError(
            f"config field view_bins: must be a table of {', '.join(names)} (got {got})", field="view_bins"
        )
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ConfigError(f"config field view_bins: unknown keys {unknown}; known: {names}", field="view_bins")
    edges = {**{name: getattr(ViewBins(), name) for name in names}, **value}
    edges = {name: _checked(f"view_bins.{name}", edge, float, False) for name, edge in edges.items()}
    if not edges["frontal_max_deg"] < edges["profile_min_deg"]:
        raise ConfigError(
            "config field view_bins: edges must increase: frontal_max_deg < profile_min_deg "
            f"(got {edges['frontal_max_deg']:g} and {edges['profile_min_deg']:g})",
            field="view_bins",
        )
    return ViewBins(**edges)


def _shown(value: object) -> str:
    """A bad value as the error shows it: ``null``, ``nan``, ``'ten'``; a table or list by its kind only."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, dict | list | tuple):
        return "a table" if isinstance(value, dict) else "a list"
    text = repr(value) if isinstance(value, str | int | float) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."
