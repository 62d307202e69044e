"""Probe and stream-decode videos with PyAV (FFmpeg), one frame in memory at a time.

Decoding is sequential (never seek-based): seeking near the end of some files fails in common
decoders while a sequential read gets every frame. A packet that fails to decode is counted and
skipped; after ``max_bad_packets`` in a row the stream is declared broken and iteration stops, so a
video with an undecodable tail yields its good head and a recorded decode error.

Frames come out upright: phone footage stores the sensor's pixels with a display matrix (side data, what
the legacy ``rotate`` tag becomes in libavformat) that says how to turn them for display. Ignoring it made
sideways faces that detectors miss or label with a wrong view. ``probe`` reports the displayed size and
``Frame.bgr`` / ``thumbnail_bgr`` apply the rotation (quarter turns; mirroring in the matrix is ignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter


class VideoError(Exception):
    """A file that cannot be used as a video: the message says why, for the ``errors`` table."""

    def __init__(self, stage: str, error_type: str, message: str) -> None:
        super().__init__(message)
        self.stage, self.error_type, self.message = stage, error_type, message


@dataclass(slots=True)
class ProbeInfo:
    """Stream metadata of a video file."""

    duration_s: float | None
    fps: float
    width: int
    height: int
    codec: str
    num_frames_hint: int | None
    rotation_deg: int = 0  # counter-clockwise turn applied for display; width/height are after it


def quarter_turns(rotation_deg: float) -> int:
    """Counter-clockwise quarter turns (0-3) for a display rotation in degrees (PyAV's ``frame.rotation``)."""
    return round(rotation_deg / 90) % 4


def upright(pixels: np.ndarray, turns: int) -> np.ndarray:
    """``(H, W, C)`` pixels turned counter-clockwise by ``turns`` quarter turns, contiguous (detectors need it)."""
    return pixels if turns % 4 == 0 else np.ascontiguousarray(np.rot90(pixels, turns))


def _first_frame_rotation(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """The display rotation of the stream, read from its first decoded frame (0 when nothing decodes).

    The display matrix reaches PyAV as frame side data; one decoded frame is the portable way to read it.
    """
    try:
        for frame in container.decode(stream):
            return int(frame.rotation)
    except (av.error.FFmpegError, ValueError):
        pass
    return 0


def probe(path: str | Path) -> ProbeInfo:
    """Read container and stream metadata; raise :class:`VideoError` when the file is not a video."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError("probe", "NoVideoStream", "the file has no video stream")
            fmt = container.format.name
            if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg opens stills as one-frame "videos"
                raise VideoError("probe", "NotAVideo", f"the file is a still image (format {fmt}), not a video")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = None
            ctx = stream.codec_context
            if not ctx.width or not ctx.height or fps <= 0:
                raise VideoError("probe", "NotAVideo", f"no usable picture stream (codec {ctx.name})")
            width, height, codec, hint = int(ctx.width), int(ctx.height), ctx.name, stream.frames or None
            rotation = _first_frame_rotation(container, stream)
            if quarter_turns(rotation) % 2:  # a quarter turn: the displayed picture is portrait for landscape
                width, height = height, width
            return ProbeInfo(duration, fps, width, height, codec, hint, rotation)
    except VideoError:
        raise
    except PermissionError as exc:
        raise VideoError("probe", "PermissionError", str(exc)) from exc
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError("probe", type(exc).__name__, str(exc) or repr(exc)) from exc


@dataclass(slots=True)
class Scalers:
    """One swscale context per output size of a stream: building one per frame costs 10x the scaling."""

    thumb: VideoReformatter = field(default_factory=VideoReformatter)
    full: VideoReformatter = field(default_factory=VideoReformatter)


@dataclass(slots=True)
class Frame:
    """One decoded frame; pixels are converted only on request (most frames only feed the shot detector)."""

    index: int  # decoded-frame counter from 0 (what a sequential reader such as OpenCV or decord gives)
    t_s: float  # presentation time, seconds from the stream start
    _frame: av.VideoFrame
    _scalers: Scalers  # one pair per stream

    @property
    def turns(self) -> int:
        """Counter-clockwise quarter turns that make this frame upright (its display matrix)."""
        return quarter_turns(self._frame.rotation)

    def bgr(self) -> np.ndarray:
        """Full-resolution upright ``(H, W, 3)`` uint8 BGR (``to_ndarray(format="bgr24")``, turned for display)."""
        return upright(self._scalers.full.reformat(self._frame, format="bgr24").to_ndarray(), self.turns)

    def thumbnail_bgr(self, width: int) -> np.ndarray:
        """Upright BGR scaled to ``width`` (aspect kept): swscale converts and scales in one pass, then the
        small picture is turned (a quarter turn scales the stored frame to the turned size)."""
        turns = self.turns
        stored_w, stored_h = self._frame.width, self._frame.height
        shown_w, shown_h = (stored_h, stored_w) if turns % 2 else (stored_w, stored_h)
        height = max(2, round(shown_h * width / max(shown_w, 1)))
        out_w, out_h = (height, width) if turns % 2 else (width, height)
        small = self._scalers.thumb.reformat(
            self._frame, width=out_w, height=out_h, format="bgr24", interpolation="AREA"
        ).to_ndarray()
        return upright(small, turns)


@dataclass(slots=True)
class DecodeStats:
    """What happened while decoding one stream."""

    num_frames: int = 0
    num_bad_packets: int = 0
    error: VideoError | None = None  # set when decoding stopped early
    errors: list[str] = field(default_factory=list)
    note: str = ""  # how the frames were read when that is worth saying (datakit.video.segments)


def iter_frames(
    path: str | Path,
    fps: float,
    stats: DecodeStats,
    *,
    max_bad_packets: int = 25,
    threads: int = 1,
    thread_type: str = "SLICE",
    seek_pts: int | None = None,
) -> Iterator[Frame]:
    """Yield every decodable frame, in order; ``t_s`` is the presentation time, else index / fps.

    ``seek_pts``: start at the keyframe at or before this pts instead (``index`` then counts from there, not
    from the start of the file: datakit.video.segments numbers such frames itself)."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        stats.error = VideoError("decode", type(exc).__name__, str(exc))
        return
    with container:
        stream = container.streams.video[0]
        # One decoder thread: parallelism comes from one worker per core. FFmpeg's automatic threading
        # (a thread per core in every worker) made 2 workers on 2 cores slower than 1; with one thread
        # each, 2 workers run the shared footage 1.78x faster than 1, and 1 worker loses nothing.
        stream.thread_type = thread_type
        stream.thread_count = threads
        time_base = stream.time_base or Fraction(1, 1)
        start_pts = stream.start_time or 0
        bad_in_row = 0
        scalers = Scalers()
        try:
            if seek_pts is not None:
                container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    stats.num_bad_packets += 1
                    bad_in_row += 1
                    if len(stats.errors) < 5:
                        stats.errors.append(f"{type(exc).__name__}: {exc}")
                    if bad_in_row >= max_bad_packets:
                        stats.error = VideoError(
                            "decode",
                            "UndecodableStream",
                            f"gave up after {bad_in_row} undecodable packets in a row at frame "
                            f"{stats.num_frames}: {stats.errors[-1]}",
                        )
                        return
                    continue
                for frame in frames:
                    bad_in_row = 0
                    index = stats.num_frames
                    t_s = float((frame.pts - start_pts) * time_base) if frame.pts is not None else index / fps
                    stats.num_frames += 1
                    yield Frame(index, t_s, frame, scalers)
        except av.error.FFmpegError as exc:  # a broken container (truncated file, bad atoms)
            stats.error = VideoError("decode", type(exc).__name__, str(exc))
    if stats.num_bad_packets and stats.error is None:
        stats.error = VideoError(
            "decode", "BadPackets", f"{stats.num_bad_packets} packets failed to decode: {stats.errors[0]}"
        )
