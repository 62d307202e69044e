"""The frozen encoders of training: the Wan VAE, the umT5 text encoder (+ tokenizer) and the MFI ViT.

Each loads from a local folder through its library's own `from_pretrained(dir, local_files_only=True)`,
so a Wan diffusers folder (vae/, text_encoder/, tokenizer/) works as is and nothing is ever downloaded.
diffusers and transformers are imported only when loading: `import harmoview.model.encoders` stays cheap.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harmoview.model.config import DiTConfig
from harmoview.model.mfi import ViTFeatures, load_vit

# Bump when an encoding convention changes (posterior mean, normalisation, text padding): caches keyed by
# the fingerprint then stop matching instead of silently mixing conventions.
_CONVENTION = "harmoview-encoders-1"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
_WAN_HINT = "or --wan-dir DIR for a diffusers Wan folder with vae/, text_encoder/ and tokenizer/"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")


@dataclass(kw_only=True, slots=True)
class EncoderPaths:
    """Where each encoder lives on disk; None means "not given"."""

    vae: Path | None = None
    """diffusers AutoencoderKLWan folder (config.json + weights)."""
    text_encoder: Path | None = None
    """transformers UMT5EncoderModel folder."""
    tokenizer: Path | None = None
    """Tokenizer folder (AutoTokenizer); None = the text-encoder folder."""
    vit: Path | None = None
    """open_clip folder for harmoview.model.mfi.load_vit (optional: MFI features)."""

    def __post_init__(self) -> None:
        for name in ("vae", "text_encoder", "tokenizer", "vit"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))

    @classmethod
    def from_wan_dir(cls, wan_dir: str | Path, vit: str | Path | None = None) -> EncoderPaths:
        """The diffusers Wan layout: <wan_dir>/vae, <wan_dir>/text_encoder, <wan_dir>/tokenizer."""
        root = Path(wan_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"--wan-dir {root} is not a directory")
        return cls(vae=root / "vae", text_encoder=root / "text_encoder", tokenizer=root / "tokenizer", vit=vit)


def vae_strides(config: Mapping[str, Any]) -> tuple[int, int]:
    """(temporal, spatial) stride of an AutoencoderKLWan, derived from its layout.

    Every dim_mult step but the last halves H and W; those flagged in temperal_downsample also halve
    time. The Wan2.2 VAE (TI2V-5B) first folds 2x2 pixels into channels (patch_size=2): stride 16.
    Older diffusers configs lack scale_factor_*, and the class then defaults them to 4/8 whatever the
    layout, so the layout is the truth; a config that declares different factors is an error.
    """
    num_down = len(config["dim_mult"]) - 1
    temporal = 2 ** sum(bool(flag) for flag in list(config["temperal_downsample"])[:num_down])
    spatial = 2**num_down * int(config.get("patch_size") or 1)
    for key, derived in (("scale_factor_temporal", temporal), ("scale_factor_spatial", spatial)):
        declared = config.get(key)
        if declared is not None and int(declared) != derived:
            raise ValueError(f"VAE config declares {key}={declared} but its layout gives {derived}")
    return temporal, spatial


def training_dtypes(bf16: bool) -> dict[str, torch.dtype]:
    """`Encoders.load` dtypes of training (and of `harmoview cache`, whose key depends on them): the text
    encoder and ViT in bf16 when training computes in bf16, the VAE always in float32 as Wan runs it."""
    return {"dtype": torch.bfloat16 if bf16 else torch.float32, "vae_dtype": torch.float32}


@contextmanager
def _quiet_loading():
    """No per-tensor "Loading weights" bars from transformers/diffusers: the trainer has its own progress."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    libraries = [lib for lib in (transformers_logging, diffusers_logging) if lib.is_progress_bar_enabled()]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()


def _require_dir(path: Path | None, what: str, flag: str, markers: Sequence[str], hint: str = "") -> Path:
    """The folder, or a FileNotFoundError that says which flag to set."""
    fix = f"set {flag} DIR" + (f" {hint}" if hint else "")
    if path is None:
        raise FileNotFoundError(f"no {what} folder given: {fix}")
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {path} does not exist: {fix}")
    if not any((path / marker).is_file() for marker in markers):
        raise FileNotFoundError(f"{what} folder {path} has no {' / '.join(markers)}: {fix}")
    return path


def _clean_caption(caption: str | None) -> str:
    """Wan's prompt cleaning without ftfy: HTML entities undone, runs of whitespace collapsed."""
    return " ".join(html.unescape(html.unescape(caption or "")).split())


def _frozen(module: nn.Module, device: torch.device) -> nn.Module:
    return module.to(device=device).eval().requires_grad_(False)


def _loaded_vae_strides(vae: nn.Module, vae_dir: Path) -> tuple[int, int]:
    """Strides from the built model's layout and the scale factors as written (diffusers fills absent
    ones with 4 and 8, which would be wrong for an old Wan2.2 config)."""
    written = json.loads((vae_dir / "config.json").read_text())
    layout = {k: v for k, v in vae.config.items() if not k.startswith("scale_factor_")}
    return vae_strides(layout | {k: v for k, v in written.items() if k.startswith("scale_factor_")})


_ROLES = ("vae", "text_encoder", "tokenizer", "vit")
_ROLE_FLAGS = {"vae": "--vae", "text_encoder": "--text-encoder", "tokenizer": "--tokenizer", "vit": "--vit"}


def _update_with_folder(digest: Any, role: str, folder: Path) -> None:
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.suffix in _WEIGHT_SUFFIXES:
            digest.update(f"{role}/{path.name}:{path.stat().st_size}\n".encode())
        elif path.suffix in (".json", ".model"):
            digest.update(f"{role}/{path.name}:".encode() + path.read_bytes() + b"\n")


def _fingerprint(paths: EncoderPaths, settings: str) -> str:
    """sha256[:16] over the settings and each folder's config-like files (by content) and weight files (by
    name and size: hashing gigabytes of weights at every start would be too slow). Folder locations are
    left out, so a moved model keeps its caches."""
    digest = hashlib.sha256(f"{_CONVENTION}\n{settings}\n".encode())
    for role in _ROLES:
        folder = getattr(paths, role)
        if folder is not None:
            _update_with_folder(digest, role, folder)
    return digest.hexdigest()[:16]


def _folder_fingerprints(paths: EncoderPaths) -> dict[str, str | None]:
    """One fingerprint per encoder folder (the same cheap recipe as `_fingerprint`, no settings, no dtypes):
    what an export records, so that a mismatch can name the encoder that differs."""
    prints: dict[str, str | None] = {}
    for role in _ROLES:
        folder = getattr(paths, role)
        if folder is None:
            prints[role] = None
            continue
        digest = hashlib.sha256(f"{_CONVENTION}\n".encode())
        _update_with_folder(digest, role, folder)
        prints[role] = digest.hexdigest()[:16]
    return prints


def encoder_record_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """How the encoders of `current` differ from those `saved` (both `Encoders.record()`), one phrase each,
    naming the setting or encoder ("vit_layers: trained with [10, 11], this run uses [9] (--vit-layers)").

    Settings a record lacks (an older export) are not compared. A ViT is compared only when training had one.
    """
    changes = []
    if "text_len" in saved and saved["text_len"] != current.get("text_len"):
        changes.append(f"text_len: trained with {saved['text_len']}, this run uses {current.get('text_len')} "
                       f"(--text-len)")  # fmt: skip
    files, now = saved.get("files") or {}, current.get("files") or {}
    if files.get("vit") is not None:
        if now.get("vit") is None:
            changes.append("vit: training used a ViT (MFI features), this run has none (--vit)")
        elif "vit_layers" in saved and list(saved["vit_layers"] or []) != list(current.get("vit_layers") or []):
            changes.append(f"vit_layers: trained with {saved['vit_layers']}, this run uses "
                           f"{current.get('vit_layers')} (--vit-layers)")  # fmt: skip
    for role in _ROLES:
        if files.get(role) is not None and now.get(role) is not None and files[role] != now[role]:
            changes.append(f"{role}: other encoder files than training's (fingerprint {files[role]}, this run "
                           f"{now[role]}; {_ROLE_FLAGS[role]})")  # fmt: skip
    return changes


class Encoders:
    """Frozen VAE, umT5 text encoder (+tokenizer) and MFI ViT, on one device, in eval mode, requires_grad False.

    Every output is float32 whatever the encoders' dtype, so caches and the loss see one dtype.
    """

    def __init__(
        self, *, vae: nn.Module, text_encoder: nn.Module, tokenizer: Any, vit: ViTFeatures | None,
        paths: EncoderPaths, strides: tuple[int, int], text_len: int, device: torch.device, fingerprint: str,
        settings: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.vae, self.text_encoder, self.tokenizer, self.vit = vae, text_encoder, tokenizer, vit
        self.paths, self.text_len, self.device = paths, text_len, device
        self.temporal_stride, self.spatial_stride = strides
        self.z_dim: int = int(vae.config.z_dim)
        self.text_dim: int = int(text_encoder.config.d_model)
        self.vit_layers: tuple[int, ...] = tuple(vit.layer_indices) if vit is not None else ()
        self.vit_dim: int | None = int(vit.visual.transformer.width) if vit is not None else None
        self.vit_num_levels: int = len(self.vit_layers)
        self._fingerprint = fingerprint
        self.settings: dict[str, Any] = dict(settings or {})
        """What the fingerprint hashes besides the files: text_len, vit_layers, dtypes (cache.json names them)."""
        self._folder_prints = _folder_fingerprints(paths)
        mean, std = vae.config.latents_mean, vae.config.latents_std
        if len(mean) != self.z_dim or len(std) != self.z_dim:
            raise ValueError(f"VAE latents_mean/std have {len(mean)}/{len(std)} entries for z_dim {self.z_dim}")
        # Normalisation in float32 even for a bf16 VAE: the std division is where precision goes.
        self._latents_mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        self._latents_std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)

    @property
    def has_vit(self) -> bool:
        """A ViT was loaded (still true after `release_text_and_vit`: its sizes are known)."""
        return self.vit_dim is not None

    def release_text_and_vit(self) -> None:
        """Free the text encoder and the ViT when their outputs come from a cache (umT5-XXL alone is about
        11 GB in bf16); sizes, strides, the fingerprint and the VAE (previews decode with it) stay."""
        self.text_encoder = self.vit = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @classmethod
    def load(
        cls, paths: EncoderPaths, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        text_len: int = 512, vit_layers: Sequence[int] = (-2,), vae_dtype: torch.dtype | None = None,
    ) -> Encoders:  # fmt: skip
        """Load every encoder from its folder (all folders are checked before anything heavy loads).

        vae_dtype: the VAE's dtype when it should differ from `dtype` (Wan runs its VAE in float32).
        """
        device = torch.device(device)
        vae_dir = _require_dir(paths.vae, "VAE", "--vae", ("config.json",), _WAN_HINT)
        text_dir = _require_dir(paths.text_encoder, "text encoder", "--text-encoder", ("config.json",), _WAN_HINT)
        tok_dir = _require_dir(paths.tokenizer or text_dir, "tokenizer", "--tokenizer", _TOKENIZER_FILES, _WAN_HINT)
        vit_dir = None if paths.vit is None else _require_dir(paths.vit, "ViT", "--vit", ("open_clip_config.json",))

        with _quiet_loading():
            return cls._load_dirs(
                paths, vae_dir, text_dir, tok_dir, vit_dir, device, dtype, text_len, vit_layers, vae_dtype
            )

    @classmethod
    def _load_dirs(
        cls, paths: EncoderPaths, vae_dir: Path, text_dir: Path, tok_dir: Path, vit_dir: Path | None,
        device: torch.device, dtype: torch.dtype, text_len: int, vit_layers: Sequence[int],
        vae_dtype: torch.dtype | None,
    ) -> Encoders:  # fmt: skip
        from diffusers import AutoencoderKLWan
        from transformers import AutoTokenizer, UMT5EncoderModel

        # dtype through from_pretrained, not .to(): the libraries keep their float32-only modules in float32.
        vae = _frozen(
            AutoencoderKLWan.from_pretrained(vae_dir, local_files_only=True, dtype=vae_dtype or dtype), device
        )
        # Encode a batch one sample at a time: latents then do not depend on what else was in the batch
        # (the cache encodes sample by sample, training may encode in batches), and peak memory stays low.
        vae.enable_slicing()
        text_encoder = _frozen(UMT5EncoderModel.from_pretrained(text_dir, local_files_only=True, dtype=dtype), device)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        vit = None if vit_dir is None else _frozen(load_vit(vit_dir, vit_layers).to(dtype), device)

        resolved = EncoderPaths(vae=vae_dir, text_encoder=text_dir, tokenizer=tok_dir, vit=vit_dir)
        layers = list(vit.layer_indices) if vit is not None else None
        settings = f"text_len={text_len} vit_layers={layers} dtype={dtype} vae_dtype={vae_dtype or dtype}"
        named = {"text_len": text_len, "vit_layers": layers, "dtype": str(dtype), "vae_dtype": str(vae_dtype or dtype)}
        return cls(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, vit=vit, paths=resolved,
            strides=_loaded_vae_strides(vae, vae_dir), text_len=text_len, device=device,
            fingerprint=_fingerprint(resolved, settings), settings=named,
        )  # fmt: skip

    def fingerprint(self) -> str:
        """16 hex digits identifying what these encoders output: configs, weight names and sizes, tokenizer
        files, text_len, ViT layers, dtypes and the encoding convention. Cache shards are keyed by it."""
        return self._fingerprint

    def record(self) -> dict[str, Any]:
        """The encoder settings a model trained with these encoders depends on, for exports, checkpoints, caches
        and sidecars: text_len, ViT layers (absolute), VAE strides and one fingerprint per encoder folder (config
        files by content, weight files by name and size; no paths, no dtypes). `encoder_record_changes` compares."""
        return {
            "text_len": self.text_len, "vit_layers": list(self.vit_layers) if self.has_vit else None,
            "vae_strides": [self.temporal_stride, self.spatial_stride], "files": dict(self._folder_prints),
        }  # fmt: skip

    @property
    def vit_feature_shape(self) -> tuple[int, int] | None:
        """(T, vit_dim * vit_num_levels) of one image's MFI features: class token + patch grid; None without ViT."""
        if self.vit is None:
            return None
        grid_h, grid_w = self.vit.visual.grid_size
        return 1 + grid_h * grid_w, self.vit_dim * self.vit_num_levels

    @property
    def vae_dtype(self) -> torch.dtype:
        """The dtype the VAE computes in (inputs are cast to it)."""
        return self.vae.dtype

    # --- VAE -------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_video(self, video: Tensor) -> Tensor:
        """video (B, 3, F, H, W) in [-1, 1], F = 1 + 4k -> normalised latents (B, z, 1 + (F-1)//4, H/s, W/s).

        The posterior mean, not a sample: deterministic, so a latent can be cached and reused.
        """
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be (B, 3, F, H, W), got {tuple(video.shape)}")
        num_frames, height, width = video.shape[2:]
        if (num_frames - 1) % self.temporal_stride:
            raise ValueError(f"frame count {num_frames} is not 1 + {self.temporal_stride}k")
        if height % self.spatial_stride or width % self.spatial_stride:
            raise ValueError(f"frame size {height}x{width} is not a multiple of the VAE stride {self.spatial_stride}")
        posterior = self.vae.encode(video.to(self.device, self.vae_dtype)).latent_dist
        return (posterior.mean.float() - self._latents_mean) / self._latents_std  # (B, z, f, h, w)

    def encode_images(self, images: Tensor) -> Tensor:
        """images (M, 3, H, W) in [-1, 1] -> (M, z, H/s, W/s): each image encoded as a 1-frame video."""
        return self.encode_video(images.unsqueeze(2)).squeeze(2)

    @torch.no_grad()
    def decode_video(self, latents: Tensor) -> Tensor:
        """Inverse of encode_video: normalised latents (B, z, f, h, w) -> (B, 3, 1 + 4(f-1), H, W) in [-1, 1]."""
        z = latents.to(self.device, torch.float32) * self._latents_std + self._latents_mean
        return self.vae.decode(z.to(self.vae_dtype)).sample.float()  # diffusers clamps to [-1, 1]

    # --- text ------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str | None]) -> Tensor:
        """captions -> (B, text_len, text_dim); features past each caption's token count are zero.

        Wan's convention: pad to text_len with zeros and pass no mask to the DiT. "" is the empty
        prompt (just the end-of-sequence token), used for text dropout and null captions.
        """
        tokens = self.tokenizer(
            [_clean_caption(caption) for caption in captions], padding="max_length", max_length=self.text_len,
            truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )  # fmt: skip
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return hidden.float() * mask[..., None].float()

    # --- ViT -------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_vit(self, images: Tensor) -> Tensor:
        """images (M, 3, H, W) in [-1, 1], any size -> (M, T, vit_dim * vit_num_levels) MFI features."""
        if self.vit is None:
            raise RuntimeError("no ViT loaded: set --vit DIR (an open_clip folder) to compute MFI features")
        x = (images.to(self.device, torch.float32) + 1) / 2  # ViTFeatures takes [0, 1]
        size = self.vit.image_size
        if tuple(x.shape[-2:]) != size:
            # antialias: reference crops are usually larger than the tower, plain bicubic would alias
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return self.vit(x.to(next(self.vit.parameters()).dtype)).float()

    # --- consistency with the DiT ----------------------------------------------------------------

    def check_model(self, config: DiTConfig) -> None:
        """ValueError listing every size on which these encoders and the DiT config disagree, and the fix."""
        problems = []
        for field_name in ("in_channels", "out_channels"):
            if getattr(config, field_name) != self.z_dim:
                problems.append(
                    f"DiT {field_name}={getattr(config, field_name)} but the VAE ({self.paths.vae}) has "
                    f"z_dim={self.z_dim}: use the DiT preset made for this VAE (z=16: Wan2.1 / Wan2.2 A14B, "
                    f"z=48: wan2.2-ti2v-5b) or point --vae at the VAE the DiT was trained with"
                )
        if config.text_dim != self.text_dim:
            problems.append(
                f"DiT text_dim={config.text_dim} but the text encoder ({self.paths.text_encoder}) has "
                f"d_model={self.text_dim}: point --text-encoder at the umT5 the DiT was trained with"
            )
        if config.use_mfi and self.vit is not None:
            if config.vit_dim != self.vit_dim:
                problems.append(
                    f"DiT vit_dim={config.vit_dim} but the ViT ({self.paths.vit}) is {self.vit_dim} wide: "
                    f"point --vit at a matching open_clip tower or change the config's vit_dim"
                )
            if config.vit_num_levels != self.vit_num_levels:
                problems.append(
                    f"DiT vit_num_levels={config.vit_num_levels} but {self.vit_num_levels} ViT layers are taken "
                    f"({list(self.vit_layers)}): load the encoders with {config.vit_num_levels} vit_layers"
                )
        if problems:
            raise ValueError("the encoders do not fit the DiT config:\n  - " + "\n  - ".join(problems))
