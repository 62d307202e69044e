"""open_clip models from local folders: the one loader, and the scorer of the clip score stage.

A folder in open_clip's hub layout holds ``open_clip_config.json`` (``{"model_cfg": {...},
"preprocess_cfg": {...}}``) beside ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``.
:class:`OpenClipFolder` finds and reads those files (a clear error names what is missing) for every user:
:class:`ClipScorer` here, harmoview's MFI vision tower (``harmoview.model.mfi.load_vit``) and its
text-alignment metric (``harmoview.evaluate.text``). Nothing is ever downloaded.

Scores (:class:`ClipScorer`): ``clip_score`` is the cosine between the image embedding of a clip's middle
frame and the text embedding of its caption; ``aesthetic_score`` is a linear/MLP head (the LAION
aesthetic predictor layouts, :func:`load_aesthetic_head`) over the L2-normalised image embedding.

torch and open_clip are imported inside the functions: datakit's default install has neither.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: weight files of a hub-layout folder, in the order they are looked for
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_FILE = "open_clip_config.json"
# open_clip's default normalisation (OpenAI CLIP statistics), used when a checkpoint names none.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True, slots=True)
class OpenClipFolder:
    """A local open_clip checkpoint folder, checked: its config and the weight file that will be read."""

    root: Path
    weights: Path
    model_cfg: dict[str, Any] = field(default_factory=dict)  #: open_clip model config (embed_dim, vision_cfg, ...)
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)  #: mean / std / size, when the folder names them

    @classmethod
    def find(cls, folder: str | Path, hint: str = "") -> OpenClipFolder:
        """Check ``folder`` and read its config; ``FileNotFoundError`` names the missing file (and ``hint``:
        which setting points here)."""
        root = Path(folder)
        config = root / CONFIG_FILE
        if not config.is_file():
            raise FileNotFoundError(
                f"{root} is not an open_clip folder: no {CONFIG_FILE}" + (f" ({hint})" if hint else "")
            )
        weights = next((root / name for name in WEIGHT_FILES if (root / name).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"no open_clip weights ({' or '.join(WEIGHT_FILES)}) in {root}")
        data = json.loads(config.read_text())
        # The hub layout nests the model config; a bare model config is accepted as well.
        return cls(root, weights, data.get("model_cfg", data), data.get("preprocess_cfg", {}))

    @property
    def name(self) -> str:
        """What scores computed with this model record (``open_clip:<folder name>``)."""
        return f"open_clip:{self.root.name}"

    @property
    def spec(self) -> str:
        """The model name open_clip's own factory loads this folder by (``create_model``, ``get_tokenizer``)."""
        return f"local-dir:{self.root.resolve()}"

    def state_dict(self, prefix: str = "") -> dict:
        """The weights; with ``prefix`` (e.g. ``"visual."``) only those keys, the prefix removed."""
        state = read_state_file(self.weights)
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}

    def load_into(self, module, prefix: str = "") -> None:
        """Load the weights (under ``prefix``) into ``module``; a missing or unexpected key is a ValueError:
        a tower built from another config must not run half-random."""
        missing, unexpected = module.load_state_dict(self.state_dict(prefix), strict=False)
        if missing or unexpected:
            problems = f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            raise ValueError(f"open_clip checkpoint mismatch in {self.root}: {problems}")


class ClipScorer:
    """Load a local open_clip model (and optionally an aesthetic head) once; score batches of frames.

    ``model_dir``: an open_clip folder (:class:`OpenClipFolder`), built through open_clip's own
    ``local-dir:`` path (``create_model`` + ``get_tokenizer``), which knows every open_clip architecture.
    ``aesthetic_head``: see :func:`load_aesthetic_head`.

    Usable as a Ray Data actor: ``__call__`` takes a batch with ``frame`` (BGR uint8 images) and
    ``caption`` (str or None) columns and adds ``clip_score`` and ``aesthetic_score``.
    """

    def __init__(self, model_dir: str | Path, aesthetic_head: str | Path | None = None, device: str = "cpu"):
        import open_clip
        import torch

        files = OpenClipFolder.find(model_dir, hint="set BuildConfig.clip_model_dir to a local open_clip folder")
        self.device = torch.device(device)
        model = open_clip.create_model(files.spec, device=self.device, require_pretrained=True)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(files.spec)
        pre = getattr(self.model.visual, "preprocess_cfg", {})
        self.mean = torch.tensor(pre.get("mean", CLIP_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("std", CLIP_STD)).view(1, 3, 1, 1)
        size = self.model.visual.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.name = self.name_for(files.root, aesthetic_head)
        self.head = None if aesthetic_head is None else self._head(aesthetic_head, files.root)

    def _head(self, path: str | Path, root: Path):
        head = load_aesthetic_head(path).to(self.device)
        width = getattr(self.model.visual, "output_dim", None)
        if width is not None and head[0].in_features != width:
            raise ValueError(
                f"aesthetic_head {path} takes {head[0].in_features}-d input but the open_clip "
                f"image embedding of {root} is {width}-d: use a head trained on this CLIP model"
            )
        return head

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
    """A chain of Linear layers from a state dict file: the 2-D ``*weight`` tensors in layer order.

    ``path``: a ``.pth``/``.safetensors`` state dict over the L2-normalised image embedding (LAION aesthetic
    predictor v1 ``weight``/``bias``, or v2's MLP ``layers.0 .. layers.7``); the layers are applied without
    activations, as those heads are trained.
    """
    from torch import nn

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic_head {path} does not exist (a local .pth/.safetensors file)")
    state = read_state_file(path)
    weights = sorted((k for k, v in state.items() if k.endswith("weight") and v.ndim == 2), key=_layer_order)
    if not weights:
        raise ValueError(f"{path}: no Linear weights (2-D '*weight' tensors) in the aesthetic head")
    layers = []
    for key in weights:
        w, bias = state[key], state.get(key[: -len("weight")] + "bias")
        linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        linear.weight.data.copy_(w)
        if bias is not None:
            linear.bias.data.copy_(bias)
        layers.append(linear)
    for a, b in itertools.pairwise(layers):
        if a.out_features != b.in_features:
            raise ValueError(f"{path}: the head's Linear layers do not chain ({a} then {b})")
    if layers[-1].out_features != 1:
        raise ValueError(f"{path}: the aesthetic head must end in one output, not {layers[-1].out_features}")
    return nn.Sequential(*layers).eval().requires_grad_(False)


def read_state_file(path: Path) -> dict:
    """A state dict from a ``.safetensors`` file or a torch pickle (tensors only: ``weights_only``); a
    training checkpoint's ``state_dict`` entry is taken when the pickle wraps one."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _layer_order(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in key.split(".")[:-1])
