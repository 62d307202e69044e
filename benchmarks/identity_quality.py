"""Identity quality of ``datakit build`` on the shipped footage and stills, per face stack (issue 8).

Source folder: ``../shared/media/videos`` (linked, not copied) plus short H.264 videos made from stills
(``stills/obama.jpg`` at 1x and 3x, ``biden2.jpg`` 1x and 3x, ``lin-manuel-miranda.png``,
``alex-lacamoire.png``; :func:`benchmarks.media_truth.still_video`). For each face stack the real
``pipelines.build.build`` runs into a temporary folder; the manifests are then scored against the ground
truth of :mod:`benchmarks.media_truth`:

- identities found vs people known, identities holding >= 1 labelled track, people split over several
  identities, identities mixing people;
- tracks dropped by gate (``tracks.drop_reason``; all null / absent before the gates existed), and how many
  of the dropped tracks were labelled faces;
- pairwise precision / recall / F1 of the linking over labelled kept tracks (same label <=> same identity),
  and BCubed precision / recall / F1 over the same tracks;
  pairs the truth cannot settle (carphone vs foreman, see media_truth) are left out;
- the stills-video facts (obama 3x: one face per frame, same view and identity as 1x and the weekly
  addresses; Miranda's still video joins his Hamilton track; Lacamoire's close-up is one identity);
- YuNet detect time per 720p frame with ``detect_max_side`` 0 vs 960 (median of repeats);
- ``--small-faces``: YuNet recall on composed 3840x2160 (and 1920x1080) frames with faces of 24-160 px (and
  large close-ups) at detect_max_side 960 / 1280 / 1920 / 0 and with 960 + tiles, i.e. whether bounded-size
  detection loses small faces at 4K.

    python -m benchmarks.identity_quality [--stacks yunet,dlib,insightface,yunet:nogates] [--out report.md]
        [--small-faces] [--workers 2] [--keep DIR]

No timing asserts: it prints side-by-side tables (and writes them to ``--out``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import Tee  # noqa: E402
from benchmarks import media_truth as mt  # noqa: E402

MODELS_DIR = ROOT.parent / "shared" / "models"
ARCFACE_PACK = MODELS_DIR / "insightface_sc_int8"
YUNET_FILE = "face_detection_yunet_2023mar.onnx"

#: (still, scale) of the videos made from stills
STILL_VIDEOS = (
    ("obama.jpg", 1.0),
    ("obama.jpg", 3.0),
    ("biden2.jpg", 1.0),
    ("biden2.jpg", 3.0),
    ("lin-manuel-miranda.png", 1.0),
    ("alex-lacamoire.png", 1.0),
)
STACKS = {
    "yunet": {"backend": "yunet"},
    "dlib": {"backend": "dlib"},
    "insightface": {"backend": "insightface", "insightface_pack": ARCFACE_PACK},
}


def still_video_name(still: str, scale: float) -> str:
    return f"still__{still}__x{scale:g}.mp4"


def parse_still_video(name: str) -> tuple[str, float] | None:
    """(still file name, scale) of a video made by :func:`make_source`, else None."""
    if not name.startswith("still__") or "__x" not in name:
        return None
    still, scale = name[len("still__") : -len(".mp4")].rsplit("__x", 1)
    return still, float(scale)


def make_source(folder: Path) -> Path:
    """The benchmark's source folder: links to the shipped videos plus the still videos."""
    folder.mkdir(parents=True, exist_ok=True)
    for video in sorted(mt.VIDEOS_DIR.iterdir()):
        link = folder / video.name
        if not link.exists():
            link.symlink_to(video.resolve())
    for still, scale in STILL_VIDEOS:
        out = folder / still_video_name(still, scale)
        if not out.exists():
            mt.still_video(mt.STILLS_DIR / still, out, scale=scale, seconds=2.0, fps=10)
    return folder


# --------------------------------------------------------------------------------------------------- build


#: ``<stack>:nogates`` runs the stack with every track gate opened (where the config has them): the
#: gates' effect, measured on the same code
NO_GATES = {"gate_min_det_score": 0.0, "gate_min_face_px": 0.0, "gate_min_sharpness": 0.0, "gate_min_landmark_ok": 0.0}


def run_build(stack: str, src: Path, out: Path, workers: int) -> tuple[dict, float]:
    import dataclasses

    from datakit.config import BuildConfig
    from pipelines.build import build

    base, _, variant = stack.partition(":")
    extra = dict(STACKS[base])
    if variant == "nogates":
        names = {f.name for f in dataclasses.fields(BuildConfig)}
        extra.update({k: v for k, v in NO_GATES.items() if k in names})
    cfg = BuildConfig(src=src, out=out, models_dir=MODELS_DIR, workers=workers, overwrite=True, **extra)
    t0 = time.perf_counter()
    summary = build(cfg, progress=False)
    return summary.to_dict() if hasattr(summary, "to_dict") else dict(vars(summary)), time.perf_counter() - t0


def _read(run: Path, name: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((run / name).glob("*.parquet"))
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def track_labels(run: Path) -> dict:
    """Per track: video name, label, identity, drop reason, frames, mean x, mean px, views, faces per frame."""
    videos = _read(run, "videos").to_pylist()
    faces = _read(run, "faces")
    tracks = _read(run, "tracks")
    by_vid = {v["video_id"]: v for v in videos}
    cols = ["track_id", "video_id", "frame_index", "bbox", "face_px", "view"]
    face_rows = faces.select(cols).to_pylist() if faces is not None else []
    per_track: dict[str, list[dict]] = defaultdict(list)
    for row in face_rows:
        per_track[row["track_id"]].append(row)
    out = {}
    for t in tracks.to_pylist() if tracks is not None else []:
        video = by_vid.get(t["video_id"], {})
        name = Path(video.get("path") or "").name
        rows = per_track.get(t["track_id"], [])
        width = float(video.get("width") or 1)
        frames = (min(r["frame_index"] for r in rows), max(r["frame_index"] for r in rows)) if rows else (0, 0)
        x_frac = float(np.mean([(r["bbox"][0] + r["bbox"][2]) / 2 / width for r in rows])) if rows else None
        px = float(np.mean([r["face_px"] for r in rows])) if rows else None
        still = parse_still_video(name)
        if still is not None:
            people = mt.STILL_TRUTH.get(still[0], ())
            label = people[0] if len(people) == 1 else None
        else:
            label = mt.label_track(name, frames, x_frac, px)
        out[t["track_id"]] = {
            "video": name,
            "label": label,
            "identity": t.get("identity_id"),
            "drop": t.get("drop_reason"),
            "frames": frames,
            "x": x_frac,
            "px": px,
            "num_faces": t.get("num_faces"),
            "views": Counter(r["view"] for r in rows if r["view"]),
        }
    return out


def pairwise(tracks: dict) -> dict:
    """Pairwise precision / recall / F1 of the linking over labelled kept tracks."""
    kept = [(tid, t) for tid, t in tracks.items() if t["label"] is not None and t["drop"] is None]
    tp = fp = fn = 0
    for a in range(len(kept)):
        for b in range(a + 1, len(kept)):
            ta, tb = kept[a][1], kept[b][1]
            truth = mt.same_person(ta["label"], tb["label"])
            if truth is None:
                continue
            ida = ta["identity"] or f"none:{kept[a][0]}"
            idb = tb["identity"] or f"none:{kept[b][0]}"
            pred = ida == idb
            tp += truth and pred
            fp += (not truth) and pred
            fn += truth and not pred
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1, "kept": len(kept)}


def bcubed(tracks: dict) -> dict:
    """BCubed precision / recall over labelled kept tracks (Bagga & Baldwin 1998; Amigo et al. 2009).

    Per track: precision = share of the tracks in its identity that show its person, recall = share of its
    person's tracks that are in its identity (itself included); averaged over tracks. Unlike pairwise scores
    a big identity does not dominate. A track without an identity is an identity of its own; pairs the media
    truth calls uncertain (``same_person`` None) are left out.
    """
    kept = [(tid, t) for tid, t in tracks.items() if t["label"] is not None and t["drop"] is None]
    precisions, recalls = [], []
    for tid, t in kept:
        mine = t["identity"] or f"none:{tid}"
        same_id = same_person = both = 0
        for oid, o in kept:
            truth = True if oid == tid else mt.same_person(t["label"], o["label"])
            if truth is None:
                continue
            pred = (o["identity"] or f"none:{oid}") == mine
            same_id += pred
            same_person += truth
            both += pred and truth
        precisions.append(both / same_id)
        recalls.append(both / same_person)
    nan = float("nan")
    precision = sum(precisions) / len(precisions) if precisions else nan
    recall = sum(recalls) / len(recalls) if recalls else nan
    f1 = 2 * precision * recall / (precision + recall) if precisions and precision + recall else nan
    return {"precision": precision, "recall": recall, "f1": f1}


def _ids(tracks: dict, video: str, label: str | None = None) -> set:
    return {
        t["identity"]
        for t in tracks.values()
        if t["video"] == video and t["drop"] is None and t["identity"] and (label is None or t["label"] == label)
    }


def faces_per_frame(run: Path, video: str) -> tuple[int, float, int]:
    """(max, mean faces per sampled frame with a face, frames) of one video."""
    videos = _read(run, "videos").to_pylist()
    vid = next((v["video_id"] for v in videos if Path(v.get("path") or "").name == video), None)
    faces = _read(run, "faces")
    if vid is None or faces is None:
        return 0, 0.0, 0
    counts = Counter(
        r["frame_index"] for r in faces.select(["video_id", "frame_index"]).to_pylist() if r["video_id"] == vid
    )
    if not counts:
        return 0, 0.0, 0
    return max(counts.values()), float(np.mean(list(counts.values()))), len(counts)


def score(run: Path, summary: dict) -> dict:
    """Everything the table shows for one stack's run."""
    tracks = track_labels(run)
    identities = _read(run, "identities")
    n_ident = identities.num_rows if identities is not None else 0
    kept = {tid: t for tid, t in tracks.items() if t["drop"] is None}
    labelled_kept = {tid: t for tid, t in kept.items() if t["label"] is not None}
    people_found = {t["label"] for t in labelled_kept.values()}
    ident_labels: dict[str, set] = defaultdict(set)
    person_ids: dict[str, set] = defaultdict(set)
    for t in labelled_kept.values():
        if t["identity"]:
            ident_labels[t["identity"]].add(t["label"])
            person_ids[t["label"]].add(t["identity"])
    unlabelled_only = {t["identity"] for t in kept.values() if t["identity"]} - set(ident_labels)
    mixed = sum(
        1 for labels in ident_labels.values() if any(mt.same_person(a, b) is False for a in labels for b in labels)
    )
    drops = Counter(t["drop"] for t in tracks.values() if t["drop"] is not None)
    dropped_labelled = sum(1 for t in tracks.values() if t["drop"] is not None and t["label"] is not None)

    # stills-video facts
    o1, o3 = still_video_name("obama.jpg", 1), still_video_name("obama.jpg", 3)
    b1, b3 = still_video_name("biden2.jpg", 1), still_video_name("biden2.jpg", 3)
    miranda, lacamoire = still_video_name("lin-manuel-miranda.png", 1), still_video_name("alex-lacamoire.png", 1)
    addresses = _ids(tracks, "obama_weekly_address_1.mp4", mt.OBAMA) | _ids(
        tracks, "obama_weekly_address_2.mp4", mt.OBAMA
    )

    def view_of(video: str) -> str:
        views = Counter()
        for t in tracks.values():
            if t["video"] == video:
                views.update(t["views"])
        return views.most_common(1)[0][0] if views else "-"

    def fpf(video: str) -> str:
        mx, mean, n = faces_per_frame(run, video)
        return f"{mx} max / {mean:.2f} mean ({n} fr)"

    def joins(a: set, b: set) -> str:
        if not a or not b:
            return "n/a (no kept track)"
        return "yes" if a & b else "no"

    ham_lac = {
        t["identity"]
        for t in labelled_kept.values()
        if t["video"].startswith("hamilton") and t["label"] == mt.LACAMOIRE
    }
    ham_lac_tracks = [t for t in tracks.values() if t["video"].startswith("hamilton") and t["label"] == mt.LACAMOIRE]
    ham_mir = _ids(tracks, "hamilton_white_house.mp4", mt.MIRANDA)
    ham_oba = _ids(tracks, "hamilton_white_house.mp4", mt.OBAMA)
    details = []
    for person, ids in sorted(person_ids.items()):
        if len(ids) > 1:
            where = Counter(t["video"] for t in labelled_kept.values() if t["label"] == person)
            details.append(f"split: {person} over {len(ids)} identities ({dict(where)})")
    for ident, labels in ident_labels.items():
        if len(labels) > 1:
            details.append(f"mixed: identity {ident} holds {sorted(labels)}")
    for t in tracks.values():
        if t["drop"] is not None and t["label"] is not None:
            details.append(
                f"dropped labelled track: {t['label']} in {t['video']} frames {t['frames'][0]}-{t['frames'][1]}"
                f" ({t['num_faces']} faces, {t['px']:.0f} px) by {t['drop']}"
            )
    known = set(mt.VIDEO_PEOPLE) | {p for s, _ in STILL_VIDEOS for p in mt.STILL_TRUTH[s]}
    return {
        "summary": summary,
        "details": details,
        "identities": n_ident,
        "identities_labelled": len(ident_labels),
        "identities_unlabelled_only": len(unlabelled_only),
        "people_known": len(known),
        "people_found": len(people_found),
        "people_split": sum(1 for ids in person_ids.values() if len(ids) > 1),
        "identities_mixed": mixed,
        "tracks": len(tracks),
        "tracks_kept": len(kept),
        "labelled_kept": len(labelled_kept),
        "drops": dict(drops),
        "dropped_labelled": dropped_labelled,
        "pairwise": pairwise(tracks),
        "bcubed": bcubed(tracks),
        "obama3_faces_per_frame": fpf(o3),
        "obama1_faces_per_frame": fpf(o1),
        "biden3_faces_per_frame": fpf(b3),
        "obama_views_1x_3x": f"{view_of(o1)} / {view_of(o3)}",
        "biden_views_1x_3x": f"{view_of(b1)} / {view_of(b3)}",
        "obama3_joins_1x": joins(_ids(tracks, o3), _ids(tracks, o1)),
        "obama1_joins_addresses": joins(_ids(tracks, o1), addresses),
        "obama3_joins_addresses": joins(_ids(tracks, o3), addresses),
        "addresses_one_identity": "yes" if len(addresses) == 1 else f"no ({len(addresses)} ids)",
        "biden3_joins_1x": joins(_ids(tracks, b3), _ids(tracks, b1)),
        "miranda_still_joins_hamilton": joins(_ids(tracks, miranda), ham_mir),
        "lacamoire_still_joins_hamilton": joins(_ids(tracks, lacamoire), ham_lac - {None}),
        "obama_audience_joins_addresses": joins(ham_oba, addresses),
        "lacamoire_closeup": f"{len(ham_lac_tracks)} tracks -> {len(ham_lac - {None})} identities",
        "door_man_across_codecs": joins(
            _ids(tracks, "single_face.mp4", mt.DOOR_MAN), _ids(tracks, "face_then_noface_hevc.mov", mt.DOOR_MAN)
        ),
        "cisco_apart": "yes"
        if _ids(tracks, "cisco_two_people.mp4", mt.CISCO_LEFT)
        and not (
            _ids(tracks, "cisco_two_people.mp4", mt.CISCO_LEFT) & _ids(tracks, "cisco_two_people.mp4", mt.CISCO_RIGHT)
        )
        else "no",
    }


# ------------------------------------------------------------------------ relink: before / after (issue 15)


def relink(run: Path, dest: Path, *, after: bool) -> dict:
    """A copy of ``run`` at ``dest`` with its identity tables re-made from the stored per-video output.

    ``after=False``: the identity pass before issue 15 (track gates, then cross-video linking of single
    tracks); ``after=True``: this version's (gates, within-video consolidation and fragments, then linking of
    the consolidated groups). No model re-runs, so both see the same faces: the difference is the pass alone.
    Returns the run's recorded summary (for :func:`score`).
    """
    import json
    import shutil

    import pyarrow.compute as pc

    from datakit.config import BuildConfig
    from datakit.faces import build_face_stack
    from datakit.passes.consolidate import consolidate_passed
    from datakit.passes.gates import GateThresholds, apply_gates
    from datakit.passes.identities import build_identities, link_identities
    from datakit.store import RunDir

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("_index", "samples", "reference_views"))
    record = json.loads((run / "run.json").read_text())
    names = {f for f in BuildConfig.__dataclass_fields__}
    cfg = BuildConfig(**{k: v for k, v in record["config"].items() if k in names and k != "view_bins"})
    stack = build_face_stack(cfg.backend, cfg.models_dir, cfg.insightface_pack, cfg.det_threshold)
    faces, tracks, clips = (_read(dest, name) for name in ("faces", "_stage/tracks", "_stage/clips"))
    tracks = apply_gates(tracks, faces, GateThresholds.resolve(cfg, stack.detector))
    groups = None
    if after:
        tracks, groups = consolidate_passed(tracks, faces, clips, cfg, stack.embedder)
    passed = pc.is_null(tracks.column("drop_reason"))
    keep = passed.to_numpy(zero_copy_only=False)
    threshold = cfg.same_person_cosine or stack.embedder.same_person_cosine
    linked = link_identities(
        tracks.filter(passed), same_person_cosine=threshold, groups=None if groups is None else groups[keep]
    )
    out = RunDir(dest)
    out.replace_table("tracks", pa_concat([linked, tracks.filter(pc.invert(passed)).cast(linked.schema)]))
    out.replace_table("identities", build_identities(linked, faces, stack.embedder.dim))
    return {**record.get("summary", {}), "face_stack": stack.name}


def pa_concat(tables):
    import pyarrow as pa

    return pa.concat_tables(tables)


def crowd_scores(run: Path) -> dict:
    """The crowd clip's identity facts: identities, one- / two-face identities, drops, and identities that
    hold boxes on one face in one frame (a box centre inside another identity's box)."""
    tracks = _read(run, "tracks").to_pylist()
    faces = _read(run, "faces").select(["track_id", "clip_id", "frame_index", "bbox"]).to_pylist()
    ident = {t["track_id"]: t["identity_id"] for t in tracks}
    per_ident: Counter = Counter()
    by_frame: dict = defaultdict(list)
    for f in faces:
        if ident.get(f["track_id"]):
            per_ident[ident[f["track_id"]]] += 1
            by_frame[f["frame_index"]].append((ident[f["track_id"]], f["bbox"]))
    shared = set()
    for boxes in by_frame.values():
        for ia, a in boxes:
            for ib, b in boxes:
                cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
                if ia != ib and a[0] <= cx <= a[2] and a[1] <= cy <= a[3]:
                    shared.add(frozenset((ia, ib)))
    frames = sorted({f["frame_index"] for f in faces})
    cover = []
    for frame, x, y in mt.CROWD_FOREGROUND.values():
        hit = {i for i, b in by_frame.get(frame, ()) if b[0] <= x <= b[2] and b[1] <= y <= b[3]}
        person = next(iter(hit)) if len(hit) == 1 else None
        cover.append((person, sum(1 for fr in frames if any(i == person for i, _ in by_frame.get(fr, ())))))
    return {
        "tracks": len(tracks),
        "foreground identities (of 3)": len({p for p, _ in cover if p}),
        "foreground frames covered by their identity": " / ".join(f"{n}/{len(frames)}" for _, n in cover),
        "identities": len(per_ident),
        "one_face": sum(1 for n in per_ident.values() if n == 1),
        "two_face": sum(1 for n in per_ident.values() if n == 2),
        "drops": dict(Counter(t["drop_reason"] for t in tracks if t["drop_reason"])),
        "pairs_on_one_face": len(shared),
    }


def print_relink(runs: list[Path], work: Path) -> None:
    """Before / after tables of the identity pass over stored runs (crowd runs: the crowd facts)."""
    for run in runs:
        res = {}
        for label, after in (("before", False), ("after", True)):
            dest = work / f"{run.name}_{label}"
            summary = relink(run, dest, after=after)
            crowd = any(Path(v).name == "crowd_walk.mp4" for v in _read(run, "videos").column("path").to_pylist())
            res[label] = crowd_scores(dest) if crowd else score(dest, summary)
            if "pairwise" in res[label]:
                res[label]["wall_s"] = float("nan")
        print(f"### {run}\n")
        if "pairwise" in res["before"]:
            print_table(res)
        else:
            print("| | " + " | ".join(res) + " |\n|---|---|---|")
            for key in res["before"]:
                print(f"| {key} | " + " | ".join(str(r[key]) for r in res.values()) + " |")
            print()


# -------------------------------------------------------------------------------------------- detect time


def detect_time(max_sides: tuple[int, ...] = (0, 960), frames: int = 12, repeats: int = 5) -> dict[int, dict]:
    """YuNet seconds per 720p frame (median over repeats of the mean over ``frames`` frames) per max side."""
    import cv2

    from datakit.faces.yunet import YuNetDetector
    from datakit.video.decode import DecodeStats, iter_frames, probe

    cv2.setNumThreads(1)
    path = mt.VIDEOS_DIR / "obama_weekly_address_1.mp4"
    info = probe(path)
    images = []
    for item in iter_frames(path, info.fps, DecodeStats()):
        if item.index % 9 == 0:
            images.append(item.bgr())
        if len(images) >= frames:
            break
    out = {}
    for side in max_sides:
        det = YuNetDetector(MODELS_DIR / YUNET_FILE, max_side=side)
        det.detect(images[0])  # warm-up (input size, allocations)
        times, found = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            found = [len(det.detect(img)) for img in images]
            times.append((time.perf_counter() - t0) / len(images))
        out[side] = {"ms": 1000 * statistics.median(times), "faces_per_frame": float(np.mean(found))}
    return out


# ----------------------------------------------------------------------------------- 4K / 1080p small faces


def compose_frames(
    sizes=(24, 32, 48, 64, 96, 160),
    large=(320, 600, 900, 1400),
    per_frame: int = 12,
    seed: int = 0,
    frame_size: tuple[int, int] = (3840, 2160),
):
    """``frame_size`` (default 3840x2160) frames with pasted faces of known size: (frame, [(box, size)]) list.

    Each still is shrunk (INTER_AREA) so that its face (YuNet box on the still, sqrt area) is the target
    size, and pasted with its surroundings onto a 4K background (a shipped no-face frame, upscaled) on a
    grid, 12 faces a frame; then one frame per ``large`` size with a single face (the still scaled up, a 4K
    window around the face): the close-up case where full-size YuNet reports phantom boxes.
    """
    import cv2

    from datakit.faces.yunet import YuNetDetector
    from datakit.video.decode import DecodeStats, iter_frames, probe

    rng = np.random.default_rng(seed)
    fw, fh = frame_size
    det = YuNetDetector(MODELS_DIR / YUNET_FILE, max_side=0)
    stills = []
    for name in ("obama.jpg", "biden2.jpg", "lin-manuel-miranda.png", "alex-lacamoire.png", "obama2.jpg", "biden.jpg"):
        img = cv2.imread(str(mt.STILLS_DIR / name))
        faces = det.detect(img)
        if faces:
            face = max(faces, key=lambda f: f.face_px)
            stills.append((img, face.bbox, face.face_px))
    path = mt.VIDEOS_DIR / "no_face.mp4"
    backgrounds = []
    for item in iter_frames(path, probe(path).fps, DecodeStats()):
        if item.index % 30 == 0:
            backgrounds.append(cv2.resize(item.bgr(), (fw, fh), interpolation=cv2.INTER_CUBIC))
    frames = []
    cells_x, cells_y = 4, 3
    cw, ch = fw // cells_x, fh // cells_y
    for n, size_order in enumerate(range(len(sizes))):
        frame = backgrounds[n % len(backgrounds)].copy()
        truth = []
        for cell in range(per_frame):
            size = sizes[(cell + size_order) % len(sizes)]
            img, (x0, y0, x1, y1), face_px = stills[int(rng.integers(len(stills)))]
            s = size / face_px
            # crop the still around the face (2.5 face sizes) to keep the paste inside its cell
            cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 1.25 * face_px
            a0, b0 = int(max(cx - half, 0)), int(max(cy - half, 0))
            a1, b1 = int(min(cx + half, img.shape[1])), int(min(cy + half, img.shape[0]))
            patch = cv2.resize(img[b0:b1, a0:a1], None, fx=s, fy=s, interpolation=cv2.INTER_AREA)[:ch, :cw]
            gx, gy = cell % cells_x, cell // cells_x
            ox = gx * cw + int(rng.integers(0, max(cw - patch.shape[1], 1)))
            oy = gy * ch + int(rng.integers(0, max(ch - patch.shape[0], 1)))
            frame[oy : oy + patch.shape[0], ox : ox + patch.shape[1]] = patch
            box = ((x0 - a0) * s + ox, (y0 - b0) * s + oy, (x1 - a0) * s + ox, (y1 - b0) * s + oy)
            truth.append((box, size))
        frames.append((frame, truth))
    for n, size in enumerate(large):  # one large face per frame: the phantom-box case (4K close-ups)
        frame = backgrounds[n % len(backgrounds)].copy()
        img, (x0, y0, x1, y1), face_px = stills[n % len(stills)]
        s = size / face_px
        scaled = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
        cx, cy = (x0 + x1) / 2 * s, (y0 + y1) / 2 * s  # face centre in the scaled still
        # a frame-size window of the scaled still, centred on the face where the still allows
        wx = int(min(max(cx - fw / 2, 0), max(scaled.shape[1] - fw, 0)))
        wy = int(min(max(cy - fh / 2, 0), max(scaled.shape[0] - fh, 0)))
        patch = scaled[wy : wy + fh, wx : wx + fw]
        oy, ox = (fh - patch.shape[0]) // 2, (fw - patch.shape[1]) // 2
        frame[oy : oy + patch.shape[0], ox : ox + patch.shape[1]] = patch
        box = (x0 * s - wx + ox, y0 * s - wy + oy, x1 * s - wx + ox, y1 * s - wy + oy)
        frames.append((frame, [(box, size)]))
    return frames


TILE_MAX_FACE_PX = 128.0  #: tile detections kept in the second pass (larger faces come from the whole frame)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _tiled(det, frame, tiles=(2, 2), overlap=0.15):
    """Detect on overlapping tiles (each shrunk by the detector to its max side), merged by NMS."""
    import cv2

    h, w = frame.shape[:2]
    tw, th = int(w / tiles[0] * (1 + overlap)), int(h / tiles[1] * (1 + overlap))
    faces = []
    for i in range(tiles[0]):
        for j in range(tiles[1]):
            x0 = min(int(i * w / tiles[0]), w - tw)
            y0 = min(int(j * h / tiles[1]), h - th)
            for f in det.detect(frame[y0 : y0 + th, x0 : x0 + tw]):
                a, b, c, d = f.bbox
                f.bbox = (a + x0, b + y0, c + x0, d + y0)
                faces.append(f)
    boxes = [[f.bbox[0], f.bbox[1], f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1]] for f in faces]
    keep = cv2.dnn.NMSBoxes(boxes, [f.det_score for f in faces], 0.0, 0.3) if faces else []
    return [faces[int(k)] for k in np.asarray(keep).reshape(-1)]


def small_faces(
    sizes=(24, 32, 48, 64, 96, 160), large=(320, 600, 900, 1400), frame_size: tuple[int, int] = (3840, 2160)
) -> dict:
    """YuNet recall per pasted face size on composed frames (default 4K), per detection setting; extra boxes
    (not matching a pasted face: phantoms or false positives) on the grid frames and on the large-face
    frames; time."""
    from datakit.faces.yunet import YuNetDetector

    frames = compose_frames(sizes, large, frame_size=frame_size)
    sizes = tuple(sizes) + tuple(sorted(set(large)))
    long_side = max(frame_size)
    sides = [side for side in (960, 1280, 1920) if side < long_side]
    settings = {f"max_side {side}": (YuNetDetector(MODELS_DIR / YUNET_FILE, max_side=side), False) for side in sides}
    settings[f"full {long_side} (0)"] = (YuNetDetector(MODELS_DIR / YUNET_FILE, max_side=0), False)
    settings[f"960 + 2x2 tiles (faces < {TILE_MAX_FACE_PX:.0f} px)"] = (
        YuNetDetector(MODELS_DIR / YUNET_FILE, max_side=960),
        True,
    )
    out = {}
    for name, (det, tiled) in settings.items():
        hits, totals, extra, extra_large, seconds = Counter(), Counter(), 0, 0, []
        for frame, truth in frames:
            t0 = time.perf_counter()
            found = det.detect(frame)
            if tiled:
                # second pass: the whole frame at 960 for large faces, tiles only for small ones (a tile cuts
                # large faces into fragment boxes); merged by NMS
                found = _merge(found + [f for f in _tiled(det, frame) if f.face_px < TILE_MAX_FACE_PX])
            seconds.append(time.perf_counter() - t0)
            matched = set()
            for box, size in truth:
                totals[size] += 1
                best = max(range(len(found)), key=lambda k: _iou(box, found[k].bbox), default=None)
                if best is not None and _iou(box, found[best].bbox) >= 0.3:
                    hits[size] += 1
                    matched.add(best)
            if len(truth) == 1:
                extra_large += len(found) - len(matched)
            else:
                extra += len(found) - len(matched)
        n_large = sum(1 for _, truth in frames if len(truth) == 1)
        out[name] = {
            "recall": {s: hits[s] / totals[s] for s in sizes},
            "extra_boxes_per_frame": extra / max(len(frames) - n_large, 1),
            "extra_boxes_large": extra_large / max(n_large, 1),
            "ms_per_frame": 1000 * statistics.median(seconds),
        }
    return out


def _merge(faces):
    import cv2

    if not faces:
        return []
    boxes = [[f.bbox[0], f.bbox[1], f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1]] for f in faces]
    keep = cv2.dnn.NMSBoxes(boxes, [f.det_score for f in faces], 0.0, 0.3)
    return [faces[int(k)] for k in np.asarray(keep).reshape(-1)]


# ------------------------------------------------------------------------------------------------- report

ROWS = (
    ("identities", "identities"),
    ("identities with >= 1 labelled track", "identities_labelled"),
    ("identities of unlabelled tracks only", "identities_unlabelled_only"),
    ("people known / found (labelled kept tracks)", None),
    ("people split over > 1 identity", "people_split"),
    ("identities mixing different people", "identities_mixed"),
    ("tracks / kept / labelled kept", None),
    ("tracks dropped by reason", None),
    ("labelled tracks dropped", "dropped_labelled"),
    ("pairwise precision", None),
    ("pairwise recall", None),
    ("pairwise F1 (tp / fp / fn)", None),
    ("BCubed precision / recall / F1", None),
    ("obama 3x: faces per sampled frame", "obama3_faces_per_frame"),
    ("obama 1x: faces per sampled frame", "obama1_faces_per_frame"),
    ("biden2 3x: faces per sampled frame", "biden3_faces_per_frame"),
    ("obama view bin 1x / 3x", "obama_views_1x_3x"),
    ("biden2 view bin 1x / 3x", "biden_views_1x_3x"),
    ("obama 3x joins obama 1x", "obama3_joins_1x"),
    ("obama 1x joins the weekly addresses", "obama1_joins_addresses"),
    ("obama 3x joins the weekly addresses", "obama3_joins_addresses"),
    ("weekly addresses one identity", "addresses_one_identity"),
    ("biden2 3x joins biden2 1x", "biden3_joins_1x"),
    ("Miranda still video joins his Hamilton track", "miranda_still_joins_hamilton"),
    ("Lacamoire still video joins his close-up", "lacamoire_still_joins_hamilton"),
    ("Obama audience (~60-70 deg) joins addresses", "obama_audience_joins_addresses"),
    ("Lacamoire close-up (frames 20-81)", "lacamoire_closeup"),
    ("door man across codecs", "door_man_across_codecs"),
    ("cisco two people apart", "cisco_apart"),
    ("build wall s", None),
)


def _cell(res: dict, label: str, key: str | None) -> str:
    if key is not None:
        return str(res[key])
    pw = res["pairwise"]
    if label.startswith("people known"):
        return f"{res['people_known']} / {res['people_found']}"
    if label.startswith("tracks /"):
        return f"{res['tracks']} / {res['tracks_kept']} / {res['labelled_kept']}"
    if label.startswith("tracks dropped"):
        return ", ".join(f"{k} {v}" for k, v in sorted(res["drops"].items(), key=lambda kv: -kv[1])) or "none"
    if label == "pairwise precision":
        return f"{pw['precision']:.3f}"
    if label == "pairwise recall":
        return f"{pw['recall']:.3f}"
    if label.startswith("pairwise F1"):
        return f"{pw['f1']:.3f} ({pw['tp']} / {pw['fp']} / {pw['fn']})"
    if label.startswith("BCubed"):
        bc = res["bcubed"]
        return f"{bc['precision']:.3f} / {bc['recall']:.3f} / {bc['f1']:.3f}"
    if label == "build wall s":
        return f"{res['wall_s']:.0f}"
    return "?"


def print_table(results: dict[str, dict]) -> None:
    names = list(results)
    stack_names = [results[n]["summary"].get("face_stack", n) for n in names]
    print("| metric | " + " | ".join(f"{n} ({s})" for n, s in zip(names, stack_names, strict=True)) + " |")
    print("|---|" + "---|" * len(names))
    for label, key in ROWS:
        print(f"| {label} | " + " | ".join(_cell(results[n], label, key) for n in names) + " |")
    print()
    for n in names:
        for line in results[n]["details"]:
            print(f"- {n}: {line}")
    print()


def print_detect_time(times: dict[int, dict]) -> None:
    base = times.get(0, {}).get("ms")
    print(
        "YuNet detect time per 1280x720 frame (obama_weekly_address_1.mp4, 12 frames, median of 5 repeats, 1 thread):\n"
    )
    print("| detect_max_side | ms / frame | vs full size | faces / frame |")
    print("|---|---|---|---|")
    for side, row in times.items():
        ratio = f"{base / row['ms']:.2f}x faster" if base and side else "1.00x"
        print(f"| {side or 'full (0)'} | {row['ms']:.1f} | {ratio} | {row['faces_per_frame']:.2f} |")
    print()


def print_small_faces(res: dict, frame_size: tuple[int, int] = (3840, 2160)) -> None:
    sizes = list(next(iter(res.values()))["recall"])
    print(
        f"YuNet recall on composed {frame_size[0]}x{frame_size[1]} frames (6 grid frames x 12 pasted faces of"
        " 24-160 px, then one frame per large face; face = sqrt(box area) px; hit = IoU >= 0.3):\n"
    )
    print(
        "| setting | "
        + " | ".join(f"{s} px" for s in sizes)
        + " | extra boxes / grid frame | extra boxes / large-face frame | ms / frame (median) |"
    )
    print("|---|" + "---|" * (len(sizes) + 3))
    for name, row in res.items():
        cells = " | ".join(f"{row['recall'][s]:.2f}" for s in sizes)
        print(
            f"| {name} | {cells} | {row['extra_boxes_per_frame']:.2f} | {row['extra_boxes_large']:.2f} | "
            f"{row['ms_per_frame']:.0f} |"
        )
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stacks",
        default="yunet,dlib,insightface",
        help="comma list of: " + ", ".join(STACKS) + "; append :nogates to open every track gate (e.g. yunet:nogates)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the printed report to this file")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers per build")
    parser.add_argument("--small-faces", action="store_true", help="also measure 4K small-face recall")
    parser.add_argument("--no-builds", action="store_true", help="skip the builds (detect time / small faces only)")
    parser.add_argument("--keep", type=Path, default=None, help="build into this folder (kept) instead of a temp one")
    parser.add_argument(
        "--relink", type=Path, nargs="+", default=None, help="only: before/after identity pass over these stored runs"
    )
    args = parser.parse_args(argv)
    if args.relink:
        with tempfile.TemporaryDirectory() as tmp:
            print_relink(args.relink, args.keep or Path(tmp))
        return
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    for s in stacks:
        if s.partition(":")[0] not in STACKS or s.partition(":")[2] not in ("", "nogates"):
            parser.error(f"unknown stack {s!r}; choose from {', '.join(STACKS)}")
    tee = Tee()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp, redirect_stdout(tee):
        work = args.keep or Path(tmp)
        print(f"# Identity quality (issue 8), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
        if not args.no_builds:
            src = make_source(work / "src")
            results = {}
            for stack in stacks:
                out = work / f"run_{stack.replace(':', '_')}"
                summary, wall = run_build(stack, src, out, args.workers)
                results[stack] = score(out, summary)
                results[stack]["wall_s"] = wall
                print(f"built {stack}: {summary.get('face_stack')} in {wall:.0f} s", file=sys.stderr)
            print(
                f"source: {len(list(src.iterdir()))} videos (11 shipped + {len(STILL_VIDEOS)} from stills); "
                f"labels from benchmarks/media_truth.py; pairs = labelled kept tracks\n"
            )
            print_table(results)
        print_detect_time(detect_time())
        if args.small_faces:
            print_small_faces(small_faces())
            print_small_faces(small_faces(large=(320, 600, 900), frame_size=(1920, 1080)), (1920, 1080))
    if args.out:
        args.out.write_text(tee.text)


if __name__ == "__main__":
    main()
