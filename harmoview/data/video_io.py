"""Video pixels in and out: frame-accurate clip reading, resize and centre crop, reference crop decoding
for training; mp4 and contact-sheet writing for generated videos and previews.

Frames are read by index with decord (random access, one decode thread per data-loader worker) and,
for a file decord refuses, by a sequential PyAV decode. Both give upright frames for phone footage with a
display matrix (rotation side data): decord 0.6 applies it itself (tested on a rotated copy), the PyAV path
turns each frame as datakit's curation decoding does (:func:`datakit.video.decode.upright`), so a sample's
frames match the faces and boxes its manifests recorded. Everything that makes a sample unusable is
raised as :class:`SampleError` with a short reason, so the data loader can skip and count it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from datakit.tools.photos import open_image
from datakit.video.decode import quarter_turns, upright


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
                if i in wanted:  # turned upright by the frame's display matrix, as decord and datakit do
                    frames[i] = upright(frame.to_ndarray(format="rgb24"), quarter_turns(frame.rotation))
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


def decode_crop(data: bytes | None, size: tuple[int, int], face_box: Sequence[float] | None = None) -> torch.Tensor:
    """JPEG (any PIL-readable image) bytes -> (3, h, w) float32 in [-1, 1], cropped to the aspect ratio around
    the face: ``face_box`` (x0, y0, x1, y1 in crop pixels, as datakit records it) centres the cut, so a face
    that the frame edge pushed off the crop's centre stays in the picture; without it, the crop's centre."""
    h, w = size
    try:
        image = open_image(data or b"", "reference crop")  # header size checked: a crafted crop is no bomb
        centering = (0.5, 0.5)
        if face_box is not None and image.width > 0 and image.height > 0:
            x0, y0, x1, y1 = (float(v) for v in face_box)
            cx, cy = (x0 + x1) / 2 / image.width, (y0 + y1) / 2 / image.height
            centering = (min(max(cx, 0.0), 1.0), min(max(cy, 0.0), 1.0))
        image = ImageOps.fit(image.convert("RGB"), (w, h), method=Image.Resampling.BICUBIC, centering=centering)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SampleError("bad_crop", f"reference crop is not an image ({type(exc).__name__}: {exc})") from exc
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (h, w, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0


# --- writing: generated videos and previews -----------------------------------------------------------

_CODECS = ("libx264", "mpeg4")  # H.264 when FFmpeg has it; MPEG-4 part 2 is in every FFmpeg build


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8 RGB."""
    if frames.ndim != 4 or frames.shape[0] != 3:
        raise ValueError(f"frames must be (3, F, H, W), got {tuple(frames.shape)}")
    pixels = ((frames.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().numpy()  # (F, H, W, 3)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row / column where H or W is odd: yuv420p halves the chroma planes."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _video_codec() -> str:
    for name in _CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # av.codec.codec.UnknownCodecError, not exported under one name across versions
            continue
    raise RuntimeError(f"this FFmpeg build has none of the encoders {_CODECS}")


def _temporary(path: Path) -> Path:
    """A sibling name for atomic writes, keeping the suffix (formats are guessed from it)."""
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def write_video(frames: torch.Tensor, path: Path, fps: float) -> Path:
    """Write (3, F, H, W) frames in [-1, 1] as an H.264 (else MPEG-4) yuv420p mp4, atomically.

    Odd sizes are padded by one edge row / column. The file appears complete or not at all.
    """
    pixels = _pad_even(to_uint8(frames))  # (F, H', W', 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, codec = _temporary(path), _video_codec()
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = pixels.shape[2], pixels.shape[1], "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18"}  # near-transparent: a preview is looked at closely
            for array in pixels:
                frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))  # flush the encoder's delayed frames
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_contact_png(frames: torch.Tensor, path: Path, *, max_frames: int | None = None) -> Path:
    """The frames of (3, F, H, W) in [-1, 1] side by side, left to right, as one PNG (H, n*W), atomically.

    max_frames: keep at most this many, evenly spaced with the first and last (None = all F).
    """
    pixels = to_uint8(frames)  # (F, H, W, 3)
    num_frames = pixels.shape[0]
    if max_frames is not None and num_frames > max_frames:
        pixels = pixels[np.linspace(0, num_frames - 1, max(max_frames, 1)).round().astype(int)]
    strip = np.concatenate(list(pixels), axis=1)  # (H, n*W, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        Image.fromarray(strip).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
