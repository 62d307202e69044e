"""Ground truth of the shipped test media (``../shared/media``) as data, and helpers built on it.

Facts come from ``../shared/media/README.md`` and from looking at the footage (x positions and face sizes
measured with YuNet boxes at the shipped resolution). A face or a track gets a person's name only when
the truth is unambiguous; everything else (small blurred faces, unnamed audience members, hands) is
``None`` = unlabelled, and benchmarks must leave it out of precision / recall.

- :data:`VIDEO_TRUTH`: per video, who appears in which frame range (inclusive), where in the frame
  (range of the face centre x / frame width) and how large (least face size, sqrt of box area in px at
  the video's own resolution).
- :data:`STILL_TRUTH`: per still, its people left to right.
- :func:`label_face` / :func:`label_track`: a person name or ``None``.
- :func:`still_video`: an H.264 mp4 made from a still (optionally scaled k x), for "one face per frame" tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

MEDIA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "media"
VIDEOS_DIR = MEDIA_DIR / "videos"
STILLS_DIR = MEDIA_DIR / "stills"

OBAMA = "Barack Obama"
BIDEN = "Joe Biden"
MIRANDA = "Lin-Manuel Miranda"
LACAMOIRE = "Alex Lacamoire"
MICHELLE = "Michelle Obama"
MARIAN = "Marian Robinson"
DOOR_MAN = "single_face man"  # single_face.mp4 and the first ~3.5 s of face_then_noface_hevc.mov
FOREMAN = "foreman man"
CARPHONE = "carphone man"
ZHLING = "zhling woman"
PEXELS = "pexels woman"
CISCO_LEFT = "cisco person left"
CISCO_RIGHT = "cisco person right"


@dataclass(frozen=True, slots=True)
class Appearance:
    """One person in one video: frames ``start..end`` (inclusive; ``None`` = to the end), optionally only
    faces whose centre x / frame width lies in ``x_range`` and whose size is at least ``min_px``."""

    person: str
    start: int = 0
    end: int | None = None
    x_range: tuple[float, float] | None = None
    min_px: float = 0.0

    def covers(self, frame_index: int) -> bool:
        return frame_index >= self.start and (self.end is None or frame_index <= self.end)

    def matches(self, frame_index: int, x_frac: float | None, face_px: float | None) -> bool:
        if not self.covers(frame_index):
            return False
        if self.x_range is not None and (x_frac is None or not self.x_range[0] <= x_frac <= self.x_range[1]):
            return False
        return face_px is None or face_px >= self.min_px


#: Who appears where in ``videos/``. Hamilton shots: 0-19 wide stage (faces < 40 px, unlabelled), 20-81
#: Lacamoire's close-up (the big face, 190-230 px; the small faces behind him are unlabelled), 82-210
#: Miranda (90-105 px, centre x 0.29-0.49), 211-274 audience (Marian Robinson x ~0.31, Barack Obama ~0.55,
#: Michelle Obama ~0.65; the man at x ~0.12 and others are unnamed).
VIDEO_TRUTH: dict[str, tuple[Appearance, ...]] = {
    "hamilton_white_house.mp4": (
        Appearance(LACAMOIRE, 20, 81, min_px=120.0),
        Appearance(MIRANDA, 82, 210, x_range=(0.2, 0.6), min_px=60.0),
        Appearance(MARIAN, 211, 274, x_range=(0.25, 0.39)),
        Appearance(OBAMA, 211, 274, x_range=(0.50, 0.60)),
        Appearance(MICHELLE, 211, 274, x_range=(0.60, 0.72)),
    ),
    "obama_weekly_address_1.mp4": (Appearance(OBAMA, min_px=100.0),),
    "obama_weekly_address_2.mp4": (Appearance(OBAMA, min_px=100.0),),
    "single_face.mp4": (Appearance(DOOR_MAN, min_px=80.0),),
    "face_then_noface_hevc.mov": (Appearance(DOOR_MAN, 0, 92, min_px=80.0),),  # 26.4 fps: 3.5 s = frame 92
    "foreman_cif.mp4": (Appearance(FOREMAN, min_px=60.0),),
    "carphone_qcif.mp4": (Appearance(CARPHONE, min_px=30.0),),
    "zhling_720p.mp4": (Appearance(ZHLING, min_px=80.0),),
    "pexels_woman_expressions.mp4": (Appearance(PEXELS, min_px=100.0),),
    "cisco_two_people.mp4": (
        Appearance(CISCO_LEFT, x_range=(0.0, 0.45), min_px=30.0),
        Appearance(CISCO_RIGHT, x_range=(0.45, 1.0), min_px=30.0),
    ),
    "no_face.mp4": (),
}

#: ``extra/crowd_walk.mp4`` (1920x1080, 25 fps, one shot): the three foreground people present for the whole
#: clip, each by a point inside their face at frame 54 (2.16 s; read off the footage, sampled at 3 fps by a
#: build). The red-haired man's box is the one on his face, not the second box YuNet puts on his hair above it.
CROWD_VIDEO = "crowd_walk.mp4"
CROWD_FOREGROUND: dict[str, tuple[int, float, float]] = {
    "white-haired woman": (54, 236.0, 702.0),
    "red-haired man": (54, 578.0, 675.0),
    "boy in blue hoodie": (54, 962.0, 734.0),
}
#: the woman in the pink scarf crossing from left to right at ~900 px/s: a point inside her face at each of
#: the four samples she is in (frames 0, 9, 18, 27; three-quarter to profile, ~110 px)
CROWD_CROSSING: dict[int, tuple[float, float]] = {
    0: (339.0, 779.0),
    9: (659.0, 817.0),
    18: (985.0, 824.0),
    27: (1341.0, 830.0),
}


#: People of each still, left to right (the largest faces; small faces of others are unlabelled).
STILL_TRUTH: dict[str, tuple[str, ...]] = {
    "obama.jpg": (OBAMA,),
    "obama2.jpg": (OBAMA,),
    "obama3.jpg": (OBAMA,),
    "obama_partial_face.jpg": (OBAMA,),
    "biden.jpg": (BIDEN,),
    "biden2.jpg": (BIDEN,),
    "two_people.jpg": (OBAMA, BIDEN),
    "obama_and_biden.jpg": (BIDEN, OBAMA),
    "lin-manuel-miranda.png": (MIRANDA,),
    "alex-lacamoire.png": (LACAMOIRE,),
}

#: Pairs of "distinct" people whose identity the footage does not settle. The README calls the carphone and
#: foreman men distinct, but both are Siemens test sequences of a young man, and two independent embedders
#: score them like one person (ArcFace int8 median 0.42 over 760 face pairs, max 0.60, where every other
#: pair of different people stays below 0.35; dlib up to 0.955): they may be the same actor. Benchmarks
#: count their pairs neither as same nor as different.
UNCERTAIN_PAIRS: frozenset[frozenset[str]] = frozenset({frozenset({CARPHONE, FOREMAN})})


def same_person(a: str | None, b: str | None) -> bool | None:
    """True / False when the truth says so, ``None`` when either is unlabelled or the pair is uncertain."""
    if a is None or b is None:
        return None
    if a == b:
        return True
    return None if frozenset({a, b}) in UNCERTAIN_PAIRS else False


#: Distinct people the media README names for ``videos/`` (the audience's Michelle Obama and Marian
#: Robinson are named there too).
VIDEO_PEOPLE = tuple(sorted({a.person for apps in VIDEO_TRUTH.values() for a in apps}))


def label_face(video: str | Path, frame_index: int, x_frac: float | None, face_px: float | None = None) -> str | None:
    """The person of one face (by video file name, frame, centre x / frame width, size), else ``None``."""
    found = [a.person for a in VIDEO_TRUTH.get(Path(video).name, ()) if a.matches(frame_index, x_frac, face_px)]
    return found[0] if len(found) == 1 else None


def label_track(
    video: str | Path,
    frames: tuple[int, int],
    x_frac: float | None,
    face_px: float | None = None,
) -> str | None:
    """The person of a track: ``frames`` = (first, last) frame index, ``x_frac`` = mean box centre x / frame
    width, ``face_px`` = mean face size. Labelled only when one appearance covers most of the track's frames
    and its position/size rules hold; otherwise ``None``."""
    first, last = int(frames[0]), int(frames[1])
    length = max(last - first + 1, 1)
    candidates = []
    for app in VIDEO_TRUTH.get(Path(video).name, ()):
        end = last if app.end is None else min(app.end, last)
        overlap = end - max(app.start, first) + 1
        if overlap < 0.5 * length:
            continue
        if app.x_range is not None and (x_frac is None or not app.x_range[0] <= x_frac <= app.x_range[1]):
            continue
        if face_px is not None and face_px < app.min_px:
            continue
        candidates.append(app.person)
    return candidates[0] if len(set(candidates)) == 1 else None


def label_still_faces(still: str | Path, faces_x: list[float], faces_px: list[float]) -> list[str | None]:
    """Labels for the faces of a still: its people go to its largest faces, in left-to-right order."""
    people = STILL_TRUTH.get(Path(still).name, ())
    labels: list[str | None] = [None] * len(faces_x)
    largest = sorted(range(len(faces_x)), key=lambda i: -faces_px[i])[: len(people)]
    for person, i in zip(people, sorted(largest, key=lambda i: faces_x[i]), strict=False):
        labels[i] = person
    return labels


def pad_even(image: np.ndarray) -> np.ndarray:
    """The image padded (edge-replicated) at the bottom/right to even width and height (yuv420p needs it)."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def still_video(
    still_path: str | Path, out_path: str | Path, *, scale: float = 1.0, seconds: float = 2.0, fps: int = 10
) -> Path:
    """Write an H.264 mp4 (PyAV, yuv420p) showing a still for ``seconds`` at ``fps``; ``scale`` enlarges or
    shrinks it first (cv2 INTER_CUBIC). Returns ``out_path``."""
    import av
    import cv2

    image = cv2.imread(str(still_path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {still_path}")
    if scale != 1.0:
        size = (max(round(image.shape[1] * scale), 2), max(round(image.shape[0] * scale), 2))
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    image = pad_even(image)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out_path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = image.shape[1], image.shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        for n in range(max(round(seconds * fps), 1)):
            frame.pts = n
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out_path
