"""Derive a benchmark corpus of long, varied videos from the shared footage (issue 11).

    python -m benchmarks.make_corpus [--src ../shared/media/videos] [--out DIR] [--seed 11]

The shipped footage is 11 short clips (69 s). Curation corpora are long files, so this script
re-encodes and concatenates those clips into a handful of files (one of about 5.5 minutes, several of
30 s - 2 minutes; about 10.4 minutes in all) at other sizes, frame rates and bitrates (libx264, CRF
variants). Every file has its own content: a seeded choice of clips, in its own order, each clip
entered at its own offset and mirrored or not, letterboxed into the output size and retimed to the
output frame rate (a source frame is shown for as long as it lasts, so motion keeps its speed). The
files are therefore distinct in bytes (datakit dedupes byte-identical files) and in frames.

Deterministic given ``--seed`` (same clips, order, offsets, mirroring; x264 with a fixed thread count).
Without ``--out`` it writes to a fresh temporary folder and prints it. Encoding uses ``ultrafast``,
one x264 thread per file and one file per core.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

ROOT = Path(__file__).resolve().parents[1]
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}


@dataclass(frozen=True, slots=True)
class Spec:
    """One output file: its name, frame size, frame rate, x264 CRF and target duration."""

    name: str
    width: int
    height: int
    fps: int
    crf: int
    duration_s: float


#: >= 10 minutes in all, one file >= 5 minutes, several shorter; sizes 1280x720 / 854x480 / 640x360
SPECS = (
    Spec("long_720p_crf23", 1280, 720, 25, 23, 330.0),
    Spec("mid_480p_crf28", 854, 480, 30, 28, 120.0),
    Spec("short_360p_crf20", 640, 360, 24, 20, 60.0),
    Spec("short_480p_crf32", 854, 480, 25, 32, 45.0),
    Spec("short_360p_crf26", 640, 360, 30, 26, 40.0),
    Spec("short_720p_crf30", 1280, 720, 30, 30, 30.0),
)


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of one source clip inside an output file."""

    path: str
    start_s: float  # offset into the source clip where the piece enters
    mirror: bool


def _sources(src: Path) -> list[tuple[str, float]]:
    """(path, duration s) of every decodable source video, sorted by name."""
    out = []
    for p in sorted(src.iterdir()):
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        try:
            with av.open(str(p)) as c:
                s = c.streams.video[0]
                dur = float(s.duration * s.time_base) if s.duration else (c.duration or 0) / av.time_base
        except (av.error.FFmpegError, IndexError):
            continue
        if dur > 0.5:
            out.append((str(p), dur))
    return out


def plan(sources: list[tuple[str, float]], spec: Spec, rng: random.Random) -> list[Piece]:
    """Seeded pieces until the file is at least ``spec.duration_s`` long.

    Each round is a random subset (at least two thirds) of the clips in a random order; clips enter
    at a random offset in their first third, mirrored with probability one half.
    """
    pieces: list[Piece] = []
    total = 0.0
    while total < spec.duration_s:
        k = max(2, int(np.ceil(len(sources) * rng.uniform(2 / 3, 1.0))))
        for path, dur in rng.sample(sources, k):
            start = round(rng.uniform(0.0, dur / 3), 2)
            pieces.append(Piece(path, start, rng.random() < 0.5))
            total += dur - start
            if total >= spec.duration_s:
                break
    return pieces


def _letterbox(frame: av.VideoFrame, spec: Spec, mirror: bool, scaler: VideoReformatter) -> av.VideoFrame:
    """The frame scaled to fit ``spec`` (aspect kept), centred on black, optionally mirrored."""
    scale = min(spec.width / frame.width, spec.height / frame.height)
    w = min(spec.width, max(2, round(frame.width * scale / 2) * 2))
    h = min(spec.height, max(2, round(frame.height * scale / 2) * 2))
    if (w, h) == (spec.width, spec.height) and not mirror:  # fills the frame: one swscale pass, encoder's format
        return scaler.reformat(frame, width=w, height=h, format="yuv420p", interpolation="BILINEAR")
    img = scaler.reformat(frame, width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray()
    if mirror:
        img = img[:, ::-1]
    canvas = np.zeros((spec.height, spec.width, 3), np.uint8)
    y, x = (spec.height - h) // 2, (spec.width - w) // 2
    canvas[y : y + h, x : x + w] = img
    return av.VideoFrame.from_ndarray(canvas, format="rgb24")


def encode(spec: Spec, pieces: list[Piece], out_dir: str) -> dict:
    """Write one output file; returns its description."""
    t0 = time.perf_counter()
    path = Path(out_dir) / f"{spec.name}.mp4"
    n_out = 0
    limit = round(spec.duration_s * spec.fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=spec.fps)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        # fixed threads: x264's output depends on its thread count; one per file, files run in parallel
        stream.options = {"crf": str(spec.crf), "preset": "ultrafast", "threads": "1", "g": str(spec.fps * 4)}
        for piece in pieces:
            with av.open(piece.path) as src:
                s = src.streams.video[0]
                s.thread_count = 1
                tb = s.time_base or Fraction(1, 1)
                start_pts = s.start_time or 0
                scaler = VideoReformatter()  # one swscale context per piece, not one per frame
                held, held_t = None, None  # the latest source frame at or before the next output time
                ready = None  # ``held`` letterboxed: only frames that are shown are converted
                base = n_out  # output frame where this piece starts
                for i, frame in enumerate(src.decode(s)):
                    t = float((frame.pts - start_pts) * tb) if frame.pts is not None else i / float(s.average_rate)
                    if t < piece.start_s:
                        continue
                    t -= piece.start_s
                    # emit output frames whose time falls before this source frame: they show the held one
                    while held is not None and n_out < limit and (n_out - base) / spec.fps < t:
                        ready = ready or _letterbox(held, spec, piece.mirror, scaler)
                        _emit(out, stream, ready, n_out, spec.fps)
                        n_out += 1
                    held, held_t, ready = frame, t, None
                if held is not None and n_out < limit:  # the last frame lasts one source frame period
                    end = held_t + 1.0 / float(s.average_rate or 25)
                    while n_out < limit and (n_out - base) / spec.fps < end:
                        ready = ready or _letterbox(held, spec, piece.mirror, scaler)
                        _emit(out, stream, ready, n_out, spec.fps)
                        n_out += 1
            if n_out >= limit:
                break
        for packet in stream.encode():
            out.mux(packet)
    return {
        "file": path.name,
        "size": f"{spec.width}x{spec.height}",
        "fps": spec.fps,
        "crf": spec.crf,
        "frames": n_out,
        "duration_s": n_out / spec.fps,
        "bytes": path.stat().st_size,
        "pieces": len(pieces),
        "encode_s": time.perf_counter() - t0,
    }


def _emit(out, stream, frame: av.VideoFrame, n: int, fps: int) -> None:
    frame.pts = n  # the encoder copies the frame on send: a held frame can be sent again with a new pts
    frame.time_base = Fraction(1, fps)
    for packet in stream.encode(frame):
        out.mux(packet)


def make_corpus(src: Path, out: Path, seed: int = 11, jobs: int = 2) -> list[dict]:
    """Build the corpus into ``out``; returns one description per file (in ``SPECS`` order)."""
    out.mkdir(parents=True, exist_ok=True)
    sources = _sources(src)
    if not sources:
        raise SystemExit(f"no decodable videos in {src}")
    rng = random.Random(seed)
    plans = [(spec, plan(sources, spec, rng)) for spec in SPECS]
    # longest first so that the long file does not become the tail
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {spec.name: pool.submit(encode, spec, pieces, str(out)) for spec, pieces in plans}
        return [futures[spec.name].result() for spec in SPECS]


def make_looped_video(path: Path, src: Path, times: int) -> Path:
    """``src`` played ``times`` times in a row, as a newcomer makes a long single-shot video (issue 18: the
    shipped pexels_woman_expressions.mp4 x 13 = 256 s, one shot: the loop seam is no cut): its packets copied
    (no re-encode) with shifted timestamps."""
    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        packets = [p for p in inp.demux(stream) if p.size]
        span = max(p.pts + p.duration for p in packets) - min(p.pts for p in packets)
        with av.open(str(path), "w") as out:
            copy = out.add_stream_from_template(stream)
            for k in range(times):
                for p in packets:
                    q = av.Packet(bytes(p))
                    q.pts, q.dts, q.duration, q.time_base = p.pts + k * span, p.dts + k * span, p.duration, p.time_base
                    q.is_keyframe, q.stream = p.is_keyframe, copy
                    out.mux(q)
    return path


def describe(files: list[dict]) -> str:
    """A Markdown table of the corpus files and a total line."""
    lines = ["| file | size | fps | CRF | duration s | frames | MB | pieces |", "|---|---|---|---|---|---|---|---|"]
    lines += [
        f"| {f['file']} | {f['size']} | {f['fps']} | {f['crf']} | {f['duration_s']:.1f} | {f['frames']} "
        f"| {f['bytes'] / 1e6:.1f} | {f['pieces']} |"
        for f in files
    ]
    total = sum(f["duration_s"] for f in files)
    lines.append(
        f"\ntotal: {len(files)} files, {total:.1f} s ({total / 60:.1f} min), "
        f"{sum(f['frames'] for f in files)} frames, {sum(f['bytes'] for f in files) / 1e6:.1f} MB"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "media" / "videos")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--jobs", type=int, default=2, help="files encoded at once (one core each)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="datakit_corpus_"))
    t0 = time.perf_counter()
    files = make_corpus(args.src, out, args.seed, args.jobs)
    print(f"corpus: {out} (seed {args.seed}, built in {time.perf_counter() - t0:.1f} s)")
    print(describe(files))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
