"""Clip quality scores: cheap per-video measures taken during the scan, and optional open_clip scores.

Per-video measures (``QualityScan``, fed by ``datakit.video.job`` with every sampled frame, i.e. the
frames at ``sample_fps`` that go to the face stack). Only a few numbers per sampled frame and the last
small gray frame are kept, so memory does not grow with resolution or with frames held:

- ``motion_score``: mean optical-flow magnitude (OpenCV Farneback) between consecutive sampled frames of
  the same clip, measured on a gray copy ``FLOW_WIDTH_PX`` (160) wide and divided by that width and by the
  time between the two samples. Unit: **frame widths per second** (0.1 = the image content moves a tenth
  of the frame width per second), so it does not depend on the resolution or on ``sample_fps``. Null for
  a clip with fewer than two sampled frames.
- ``sharpness``: median over the clip's sampled frames of the variance of the Laplacian of the gray frame
  resized to ``SHARP_WIDTH_PX`` (320) wide; a fixed size, so a small (or upscaled) source scores lower.
- ``brightness``: mean luma (BT.601 gray), 0 = black, 1 = white, averaged over the clip's sampled frames.
- ``main_face_px``: median face size (px, sqrt of the box area, in source pixels) of the clip's main face,
  the track with most faces in the clip; null without faces.
- ``face_share``: share of the clip's sampled frames with at least one (tracked) face, 0..1.

Optional open_clip scores (``ClipScorer``): ``clip_score`` is the cosine between the image embedding of a
clip's middle frame and the text embedding of its caption; ``aesthetic_score`` is a linear/MLP head (the
LAION aesthetic predictor layouts) over the L2-normalised image embedding. Models come from local files
only; nothing is downloaded.
"""

from __future__ import annotations

import itertools
from array import array
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

FLOW_WIDTH_PX = 160  #: width of the gray copy optical flow is measured on
SHARP_WIDTH_PX = 320  #: width of the gray copy the Laplacian variance is measured on
# Farneback settings (pyramid scale, levels, window, iterations, poly_n, poly_sigma, flags): 4 levels at
# 160 px follow shifts of ~20 px between two samples (a fast pan at 3 fps).
_FARNEBACK = (0.5, 4, 15, 3, 5, 1.2, 0)


class QualityScan:
    """Per-sample measures of one video, aggregated per clip once the clips are known.

    Clip boundaries are final only after the scan (long shots are split afterwards), so each sampled
    frame leaves a few numbers (frame index, sharpness, brightness, motion from the previous sample);
    the only pixels kept are the previous sample's ``FLOW_WIDTH_PX`` gray copy.
    """

    def __init__(self) -> None:
        self.frame_index = array("q")
        self.sharpness = array("d")
        self.brightness = array("d")
        self.motion = array("d")  # frame widths per second from the previous sample; nan = none
        self.prev_index = array("q")  # frame index of the sample ``motion`` was measured against; -1 = none
        self._prev: tuple[int, float, np.ndarray] | None = None  # (frame index, t_s, small gray)

    def __len__(self) -> int:
        return len(self.frame_index)

    def add(self, index: int, t_s: float, frame_bgr: np.ndarray, *, cut: bool = False) -> None:
        """Measure one sampled frame; ``cut`` = it starts a new shot (no motion across a cut)."""
        gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
        mid = _resize_width(gray, SHARP_WIDTH_PX)
        small = _resize_width(mid, FLOW_WIDTH_PX)
        motion, prev_index = float("nan"), -1
        if self._prev is not None and not cut and t_s > self._prev[1] and self._prev[2].shape == small.shape:
            flow = cv2.calcOpticalFlowFarneback(self._prev[2], small, None, *_FARNEBACK)
            pixels = float(np.linalg.norm(flow, axis=-1).mean())
            motion, prev_index = pixels / FLOW_WIDTH_PX / (t_s - self._prev[1]), self._prev[0]
        self.frame_index.append(int(index))
        self.sharpness.append(float(cv2.Laplacian(mid, cv2.CV_64F).var()))
        self.brightness.append(float(mid.mean()) / 255.0)
        self.motion.append(motion)
        self.prev_index.append(prev_index)
        self._prev = (int(index), float(t_s), small)

    def clip_scores(
        self,
        clip_starts: Sequence[int],
        face_frame: Sequence[int],
        face_track: Sequence[object],
        face_px: Sequence[float],
    ) -> list[dict[str, float | None]]:
        """Scores of each clip; ``clip_starts`` = first frame of each clip (ascending), the faces as
        parallel sequences (frame index, track key, size px) of the faces kept in the manifest."""
        starts = np.asarray(clip_starts, dtype=np.int64)
        n = len(starts)
        index = np.frombuffer(self.frame_index, dtype=np.int64) if len(self) else np.zeros(0, np.int64)
        clip = np.searchsorted(starts, index, side="right") - 1
        prev = np.frombuffer(self.prev_index, dtype=np.int64) if len(self) else np.zeros(0, np.int64)
        prev_clip = np.where(prev >= 0, np.searchsorted(starts, prev, side="right") - 1, -2)
        sharp, bright = np.asarray(self.sharpness), np.asarray(self.brightness)
        motion = np.asarray(self.motion)
        pair_ok = (prev_clip == clip) & np.isfinite(motion)

        frames_with_face: dict[int, set[int]] = defaultdict(set)
        track_px: dict[tuple[int, object], list[float]] = defaultdict(list)
        f_clip = np.searchsorted(starts, np.asarray(face_frame, dtype=np.int64), side="right") - 1
        for c, frame, key, px in zip(f_clip.tolist(), face_frame, face_track, face_px, strict=True):
            frames_with_face[c].add(int(frame))
            track_px[(c, key)].append(float(px))
        main: dict[int, list[float]] = {}
        for (c, _), sizes in track_px.items():
            best = main.get(c)
            if best is None or (len(sizes), np.median(sizes)) > (len(best), np.median(best)):
                main[c] = sizes

        out = []
        for c in range(n):
            here = clip == c
            num = int(here.sum())
            pairs = motion[here & pair_ok]
            out.append(
                {
                    "motion_score": float(pairs.mean()) if pairs.size else None,
                    "sharpness": float(np.median(sharp[here])) if num else None,
                    "brightness": float(bright[here].mean()) if num else None,
                    "main_face_px": float(np.median(main[c])) if c in main else None,
                    "face_share": min(1.0, len(frames_with_face.get(c, ())) / num) if num else None,
                }
            )
        return out


def _resize_width(gray: np.ndarray, width: int) -> np.ndarray:
    h, w = gray.shape[:2]
    height = max(2, round(h * width / max(w, 1)))
    interp = cv2.INTER_AREA if w >= width else cv2.INTER_LINEAR
    return cv2.resize(gray, (width, height), interpolation=interp)


# --- optional open_clip scores ------------------------------------------------------------------------

_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipScorer:
    """Load a local open_clip model (and optionally an aesthetic head) once; score batches of frames.

    ``model_dir``: an open_clip folder in the hub layout, ``open_clip_config.json`` (``{"model_cfg": ...,
    "preprocess_cfg": ...}``) beside ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``;
    loaded through open_clip's own ``local-dir:`` path (``create_model`` + ``get_tokenizer``), never
    downloading. ``aesthetic_head``: a ``.pth``/``.safetensors`` state dict of a chain of Linear layers over
    the L2-normalised image embedding (LAION aesthetic predictor v1 ``weight``/``bias``, or v2's MLP
    ``layers.0 .. layers.7``; applied without activations, as those heads are trained).

    Usable as a Ray Data actor: ``__call__`` takes a batch with ``frame`` (BGR uint8 images) and
    ``caption`` (str or None) columns and adds ``clip_score`` and ``aesthetic_score``.
    """

    def __init__(self, model_dir: str | Path, aesthetic_head: str | Path | None = None, device: str = "cpu"):
        import open_clip
        import torch

        root = Path(model_dir)
        if not (root / "open_clip_config.json").is_file():
            raise FileNotFoundError(
                f"clip_model_dir {root} is not an open_clip folder: no open_clip_config.json "
                "(set BuildConfig.clip_model_dir to a local open_clip checkpoint folder)"
            )
        if not any((root / name).is_file() for name in _WEIGHT_FILES):
            raise FileNotFoundError(f"no open_clip weights ({' or '.join(_WEIGHT_FILES)}) in {root}")
        self.device = torch.device(device)
        spec = f"local-dir:{root.resolve()}"
        model = open_clip.create_model(spec, device=self.device, require_pretrained=True)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(spec)
        pre = self.model.visual.preprocess_cfg if hasattr(self.model.visual, "preprocess_cfg") else {}
        self.mean = torch.tensor(pre.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)
        size = self.model.visual.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.name = self.name_for(root, aesthetic_head)
        self.head = None
        if aesthetic_head is not None:
            self.head = load_aesthetic_head(aesthetic_head).to(self.device)
            width = getattr(self.model.visual, "output_dim", None)
            if width is not None and self.head[0].in_features != width:
                raise ValueError(
                    f"aesthetic_head {aesthetic_head} takes {self.head[0].in_features}-d input but the open_clip "
                    f"image embedding of {root} is {width}-d: use a head trained on this CLIP model"
                )

    @staticmethod
    def name_for(model_dir: str | Path, aesthetic_head: str | Path | None = None) -> str:
        """The name a scorer of these files records with its scores (known before loading them)."""
        name = f"open_clip:{Path(model_dir).name}"
        return name + (f"+{Path(aesthetic_head).name}" if aesthetic_head else "")

    def _pixels(self, frames_bgr: Sequence[np.ndarray]):
        """BGR frames -> (N, 3, H, W): short side resized to the tower's size, centre-cropped, normalised."""
        import torch
        import torch.nn.functional as F

        batch = []
        for frame in frames_bgr:
            frame = np.asarray(frame, dtype=np.uint8)
            image = torch.from_numpy(np.ascontiguousarray(frame[..., ::-1])).permute(2, 0, 1)[None].float() / 255.0
            h, w = image.shape[-2:]
            scale = max(self.image_size[0] / h, self.image_size[1] / w)
            size = (max(self.image_size[0], round(h * scale)), max(self.image_size[1], round(w * scale)))
            image = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True)
            top, left = (size[0] - self.image_size[0]) // 2, (size[1] - self.image_size[1]) // 2
            batch.append(image[..., top : top + self.image_size[0], left : left + self.image_size[1]].clamp(0, 1))
        return ((torch.cat(batch) - self.mean) / self.std).to(self.device)

    def score(
        self, frames_bgr: Sequence[np.ndarray], captions: Sequence[str | None]
    ) -> tuple[list[float | None], list[float | None]]:
        """(clip_score per item: cosine image-caption, None without caption; aesthetic_score per item:
        None without a head)."""
        import torch
        import torch.nn.functional as F

        if len(frames_bgr) != len(captions):
            raise ValueError(f"{len(frames_bgr)} frames but {len(captions)} captions")
        if not frames_bgr:
            return [], []
        with torch.no_grad():
            image = F.normalize(self.model.encode_image(self._pixels(frames_bgr)).float(), dim=-1)
            clip_scores: list[float | None] = [None] * len(captions)
            texted = [i for i, c in enumerate(captions) if c]
            if texted:
                tokens = self.tokenizer([captions[i] for i in texted]).to(self.device)
                text = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
                cos = (image[texted] * text).sum(-1).tolist()
                for i, value in zip(texted, cos, strict=True):
                    clip_scores[i] = float(value)
            aesthetic: list[float | None] = [None] * len(captions)
            if self.head is not None:
                aesthetic = [float(v) for v in self.head(image).reshape(-1).tolist()]
        return clip_scores, aesthetic

    def __call__(self, batch: dict) -> dict:
        """Ray Data ``map_batches`` form: adds ``clip_score`` and ``aesthetic_score`` to the batch."""
        captions = [None if c is None else str(c) for c in list(batch["caption"])]
        clip_scores, aesthetic = self.score(list(batch["frame"]), captions)
        return {
            **batch,
            "clip_score": np.array([np.nan if v is None else v for v in clip_scores], dtype=np.float32),
            "aesthetic_score": np.array([np.nan if v is None else v for v in aesthetic], dtype=np.float32),
        }


def load_aesthetic_head(path: str | Path):
    """A chain of Linear layers from a state dict file: the 2-D ``*weight`` tensors in layer order."""
    import torch
    from torch import nn

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic_head {path} does not exist (a local .pth/.safetensors file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    weights = [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    if not weights:
        raise ValueError(f"{path}: no Linear weights (2-D '*weight' tensors) in the aesthetic head")
    weights.sort(key=_layer_order)
    layers = []
    for key in weights:
        w = state[key]
        linear = nn.Linear(w.shape[1], w.shape[0], bias=key[: -len("weight")] + "bias" in state)
        linear.weight.data.copy_(w)
        if linear.bias is not None:
            linear.bias.data.copy_(state[key[: -len("weight")] + "bias"])
        layers.append(linear)
    for a, b in itertools.pairwise(layers):
        if a.out_features != b.in_features:
            raise ValueError(f"{path}: the head's Linear layers do not chain ({a} then {b})")
    if layers[-1].out_features != 1:
        raise ValueError(f"{path}: the aesthetic head must end in one output, not {layers[-1].out_features}")
    return nn.Sequential(*layers).eval().requires_grad_(False)


def _layer_order(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in key.split(".")[:-1])
