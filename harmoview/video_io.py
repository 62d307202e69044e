"""Pixels for training: frame-accurate clip reading, resize and centre crop, reference crop decoding.

Frames are read by index with decord (random access, one decode thread per data-loader worker) and,
for a file decord refuses, by a sequential PyAV decode. Everything that makes a sample unusable is
raised as :class:`SampleError` with a short reason, so the data loader can skip and count it.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError


class SampleError(Exception):
    """A sample that cannot be used; ``reason`` is a short key for counting (``missing_video``, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def read_frames(path: str | Path, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` (source frame numbers, 0-based) of ``path`` as (F, H, W, 3) uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise SampleError("missing_video", f"{path} does not exist")
    if not indices:
        raise ValueError("read_frames needs at least one frame index")
    try:
        return _read_decord(path, indices)
    except Exception:  # decord refuses some containers/codecs that FFmpeg through PyAV reads
        return _read_pyav(path, indices)


def _read_decord(path: Path, indices: list[int]) -> np.ndarray:
    from decord import VideoReader, cpu  # imported here: without decord (no wheel) PyAV still reads

    reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    if max(indices) >= len(reader):
        # decord's length is the container's frame count, which can be wrong either way: let PyAV count
        raise IndexError(f"{path}: decord counts {len(reader)} frames, frame {max(indices)} asked")
    return reader.get_batch(list(indices)).asnumpy()  # (F, H, W, 3)


def _read_pyav(path: Path, indices: list[int]) -> np.ndarray:
    # Sequential decode up to the last wanted frame: slower than seeking, but frame-exact on any file.
    wanted = set(indices)
    last = max(indices)
    frames: dict[int, np.ndarray] = {}
    count = 0
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                count = i + 1
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except Exception as exc:  # av.FFmpegError and friends: broken before the last wanted frame
        raise SampleError("unreadable_video", f"{path}: {type(exc).__name__}: {exc}") from exc
    if len(frames) < len(wanted):
        raise SampleError("short_video", f"{path} decoded {count} frames, frame {last} asked")
    return np.stack([frames[i] for i in indices])


def resize_center_crop(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (3, F, h, w) uint8: centre crop to the aspect ratio, then resize.

    Cropping first and resizing the crop equals an aspect-preserving resize to cover plus a centre
    crop, while resizing fewer pixels. The result stays uint8 (`to_unit_range` converts it on the
    training device): a float32 81 x 480p clip is 388 MB, its conversion cost more than its decode, and
    uint8 moves a quarter of the bytes from loader workers to the trainer.
    """
    h, w = size
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (F, 3, H, W), channels-last
    src_h, src_w = x.shape[-2:]
    if src_w * h > src_h * w:  # source wider than the target: crop width
        crop_w, crop_h = max(1, round(src_h * w / h)), src_h
    else:
        crop_w, crop_h = src_w, max(1, round(src_w * h / w))
    top, left = (src_h - crop_h) // 2, (src_w - crop_w) // 2
    x = x[:, :, top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) != (h, w):
        # uint8 antialiased bilinear: torch's fast CPU path, and half the memory of float at 81 x 720p
        x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=(h, w), mode="bilinear", antialias=True)
    return x.permute(1, 0, 2, 3).contiguous()  # (3, F, h, w) uint8


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (in place after the one copy), on the tensor's device."""
    return pixels.float().div_(127.5).sub_(1.0)


def decode_crop(data: bytes | None, size: tuple[int, int]) -> torch.Tensor:
    """JPEG (any PIL-readable image) bytes -> (3, h, w) float32 in [-1, 1], centre-cropped to the aspect ratio."""
    h, w = size
    try:
        image = Image.open(io.BytesIO(data or b""))
        image = ImageOps.fit(image.convert("RGB"), (w, h), method=Image.Resampling.BICUBIC)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SampleError("bad_crop", f"reference crop is not an image ({type(exc).__name__}: {exc})") from exc
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (h, w, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0
