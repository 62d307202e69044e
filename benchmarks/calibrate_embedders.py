"""Calibrate each identity embedder on real, labelled faces: same-person vs different-person cosine by
head yaw and face size, and the operating point (threshold, least size, largest yaw) that follows.

Faces come from the shipped media (``../shared/media``; labels from :mod:`benchmarks.media_truth`): the
stills (padded by 30 % - insightface's detector misses faces that fill a tight crop - and also shrunk so
that their face is ~32/48/64 px, to measure small faces of known people), and frames of the videos.
Each face goes through the stack's own detector, pose, chip and embed, as in ``datakit/video_job.py``.

Pairs: *same* = same person from different sources (a still and its shrunk copies are one source); *same
(within)* = same person, same video, frames >= 1 s apart (shown, not used for the operating point: one
recording is easier than two); *diff* = different people, any sources. A pair's yaw is the larger |yaw|
of its two faces and its size the smaller face size.

    python benchmarks/calibrate_embedders.py [--embedders dlib,arcface] [--out /tmp/calib_report.md]

**Track sets** (``--track-sets RUN [RUN ...]``, issue 15): the set-to-set score of the within-video
consolidation (:mod:`datakit.passes.consolidate`), at track level, on the embedded faces of finished
``datakit build`` runs of one stack (e.g. ``benchmarks/identity_quality.py --keep DIR``, plus a crowd run).
Pairs of tracks: *same* / *diff* from the labels of :mod:`benchmarks.media_truth` (split into within one
video and across videos), and *on screen together*: two tracks of one clip that overlap in time, which
are different people in any footage (no labels needed: this is how the crowd clip contributes its many
45-80 px background faces, the hardest negatives). Scores: max, mean of the top 3, mean of all face
pairs, cosine of the mean embeddings.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import Tee  # noqa: E402
from benchmarks import media_truth as mt  # noqa: E402

MODELS_DIR = ROOT.parent / "shared" / "models"
ARCFACE_PACK = MODELS_DIR / "insightface_sc_int8"
YAW_BINS = ((0, 20), (20, 45), (45, 60), (60, 75), (75, 181))
PX_BINS = ((0, 40), (40, 60), (60, 80), (80, 1e9))
MIN_FACE_PX = 24.0  # BuildConfig.min_face_px: smaller faces never reach the embedder
SHRINK_TO_PX = (32.0, 48.0, 64.0)
STILL_PAD = 0.30


@dataclass(slots=True)
class Sample:
    person: str
    source: str  # file name (shrunk stills keep their still's name)
    kind: str  # "still", "still_small", "video"
    frame: int
    t_s: float
    face_px: float
    yaw: float | None
    det: float
    emb: np.ndarray | None = None


def make_stack(name: str):
    from datakit.faces import build_face_stack

    if name == "dlib":
        return build_face_stack("yunet", models_dir=MODELS_DIR)
    if name == "arcface":
        return build_face_stack("insightface", insightface_pack=ARCFACE_PACK, models_dir=MODELS_DIR)
    raise ValueError(f"unknown embedder {name!r}")


def _faces(stack, frame: np.ndarray):
    faces = [f for f in stack.detector.detect(frame) if f.face_px >= MIN_FACE_PX]
    if faces:
        stack.pose.estimate(frame, faces)
    return faces


def _pad(image: np.ndarray, frac: float) -> np.ndarray:
    h, w = image.shape[:2]
    py, px = round(h * frac), round(w * frac)
    return cv2.copyMakeBorder(image, py, py, px, px, cv2.BORDER_CONSTANT, value=(0, 0, 0))


def collect(stack, video_fps: float = 5.0, hamilton_fps: float = 10.0) -> tuple[list[Sample], list[np.ndarray]]:
    """Labelled faces and their chips, through the stack's detector, pose and chip."""
    from datakit.video.decode import DecodeStats, iter_frames, probe

    samples: list[Sample] = []
    chips: list[np.ndarray] = []

    def add(frame, face, person, source, kind, index=0, t_s=0.0):
        try:
            chip = stack.embedder.chip(frame, face)
        except ValueError:
            return
        samples.append(Sample(person, source, kind, index, t_s, face.face_px, face.yaw_deg, face.det_score))
        chips.append(chip)

    for still in sorted(mt.STILL_TRUTH):
        image = cv2.imread(str(mt.STILLS_DIR / still), cv2.IMREAD_COLOR)
        frame = _pad(image, STILL_PAD)
        faces = _faces(stack, frame)
        labels = mt.label_still_faces(still, [(f.bbox[0] + f.bbox[2]) / 2 for f in faces], [f.face_px for f in faces])
        main_px = []
        for face, person in zip(faces, labels, strict=True):
            if person is not None:
                add(frame, face, person, still, "still")
                main_px.append(face.face_px)
        if not main_px:
            print(f"  [{stack.embedder.name}] no labelled face found in {still}", file=sys.stderr)
            continue
        for target in SHRINK_TO_PX:
            scale = target / min(main_px)
            if scale >= 0.9:
                continue
            small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            frame = _pad(small, max(STILL_PAD, 0.5))
            faces = _faces(stack, frame)
            labels = mt.label_still_faces(
                still, [(f.bbox[0] + f.bbox[2]) / 2 for f in faces], [f.face_px for f in faces]
            )
            for face, person in zip(faces, labels, strict=True):
                if person is not None:
                    add(frame, face, person, still, "still_small")

    for name in sorted(mt.VIDEO_TRUTH):
        path = mt.VIDEOS_DIR / name
        if not mt.VIDEO_TRUTH[name]:
            continue
        info = probe(path)
        step = 1.0 / (hamilton_fps if "hamilton" in name else video_fps)
        next_t = 0.0
        for item in iter_frames(path, info.fps, DecodeStats()):
            if item.t_s + 1e-6 < next_t:
                continue
            next_t = item.t_s + step
            frame = item.bgr()
            width = frame.shape[1]
            for face in _faces(stack, frame):
                x_frac = (face.bbox[0] + face.bbox[2]) / 2 / width
                person = mt.label_face(name, item.index, x_frac, face.face_px)
                if person is not None:
                    add(frame, face, person, name, "video", item.index, item.t_s)
    return samples, chips


def embed_all(stack, samples: list[Sample], chips: list[np.ndarray], batch: int = 64) -> None:
    for start in range(0, len(chips), batch):
        vectors = stack.embedder.embed(chips[start : start + batch])
        for sample, vec in zip(samples[start : start + batch], vectors, strict=True):
            sample.emb = np.asarray(vec, np.float32)


@dataclass(slots=True)
class Pairs:
    cos: np.ndarray
    same: np.ndarray  # same person, different sources
    within: np.ndarray  # same person, same source, >= 1 s apart
    diff: np.ndarray
    uncertain: np.ndarray  # pairs of people the truth does not tell apart (carphone / foreman)
    yaw: np.ndarray  # larger |yaw| of the pair (nan when unknown)
    px: np.ndarray  # smaller face size
    i: np.ndarray
    j: np.ndarray


def make_pairs(samples: list[Sample]) -> Pairs:
    emb = np.stack([s.emb for s in samples])
    sims = emb @ emb.T
    i, j = np.triu_indices(len(samples), k=1)
    person = np.array([s.person for s in samples])
    source = np.array([s.source for s in samples])
    t_s = np.array([s.t_s for s in samples])
    yaw = np.array([abs(s.yaw) if s.yaw is not None else np.nan for s in samples])
    px = np.array([s.face_px for s in samples])
    same_person = person[i] == person[j]
    uncertain = np.array([mt.same_person(a, b) is None for a, b in zip(person[i], person[j], strict=True)])
    same_source = source[i] == source[j]
    return Pairs(
        cos=sims[i, j],
        same=same_person & ~same_source,
        within=same_person & same_source & (np.abs(t_s[i] - t_s[j]) >= 1.0),
        diff=~same_person & ~uncertain,
        uncertain=uncertain,
        yaw=np.fmax(yaw[i], yaw[j]),
        px=np.minimum(px[i], px[j]),
        i=i,
        j=j,
    )


def _stats(values: np.ndarray) -> str:
    if values.size == 0:
        return f"{0:>6} {'':>6} {'':>6} {'':>6} {'':>6} {'':>6}"
    q = np.quantile(values, [0.0, 0.05, 0.5, 0.95, 1.0])
    return f"{values.size:>6} " + " ".join(f"{v:6.3f}" for v in q)


HEAD = f"{'n':>6} {'min':>6} {'5%':>6} {'med':>6} {'95%':>6} {'max':>6}"


def print_tables(p: Pairs) -> None:
    print("cosine similarity of face pairs (n, min, 5%, median, 95%, max)\n")
    print(f"{'bin':<14} | {'same person, different sources':^41} | {'different people':^41} | {'same, one video':^41}")
    print(f"{'':<14} | {HEAD} | {HEAD} | {HEAD}")
    rows = [("all", np.ones_like(p.same))]
    rows += [(f"yaw {lo}-{hi if hi < 181 else ''}", (p.yaw >= lo) & (p.yaw < hi)) for lo, hi in YAW_BINS]
    rows += [("yaw unknown", np.isnan(p.yaw))] if np.isnan(p.yaw).any() else []
    rows += [(f"px {lo}-{int(hi) if hi < 1e9 else ''}", (p.px >= lo) & (p.px < hi)) for lo, hi in PX_BINS]
    for label, mask in rows:
        print(
            f"{label:<14} | {_stats(p.cos[mask & p.same])} | {_stats(p.cos[mask & p.diff])} | "
            f"{_stats(p.cos[mask & p.within])}"
        )
    print(f"{'uncertain':<14} | {'':>41} | {_stats(p.cos[p.uncertain])} |  (carphone vs foreman, see media_truth)")
    print()


def print_yaw_by_px(p: Pairs, thr: float) -> None:
    """Same-person (cross-source) share >= thr and different-people max, yaw bin x size bin."""
    print(f"cross table at threshold {thr:.3f}: 'same >= thr: share (n) / diff max (n)'")
    cols = [f"px {lo}-{int(hi) if hi < 1e9 else ''}" for lo, hi in PX_BINS]
    print(f"{'':<10} " + " ".join(f"{c:>22}" for c in cols))
    for lo, hi in YAW_BINS:
        cells = []
        for plo, phi in PX_BINS:
            m = (p.yaw >= lo) & (p.yaw < hi) & (p.px >= plo) & (p.px < phi)
            s, d = p.cos[m & p.same], p.cos[m & p.diff]
            share = f"{(s >= thr).mean():.2f}({s.size})" if s.size else "-"
            dmax = f"{d.max():.2f}({d.size})" if d.size else "-"
            cells.append(f"{share + ' / ' + dmax:>22}")
        print(f"{'yaw ' + str(lo) + '-' + (str(hi) if hi < 181 else ''):<10} " + " ".join(cells))
    print()


def print_groups(samples: list[Sample], p: Pairs) -> None:
    """Same-person cross-source pairs grouped by source pair, and the closest different-people pairs."""
    src = [f"{s.source}{'(small)' if s.kind == 'still_small' else ''}" for s in samples]
    where = [s.source if s.kind == "video" else "stills" for s in samples]  # stills pooled, videos apart
    groups: dict[tuple[str, str, str], list[float]] = {}
    for k in np.flatnonzero(p.same):
        a, b = sorted((where[p.i[k]], where[p.j[k]]))
        groups.setdefault((samples[p.i[k]].person, a, b), []).append(float(p.cos[k]))
    print("same person across sources, stills pooled (min / median / max, n):")
    for (person, a, b), vals in sorted(groups.items()):
        v = np.array(vals)
        print(f"  {person:<20} {a:<34} vs {b:<34} {v.min():.3f} / {np.median(v):.3f} / {v.max():.3f}  ({v.size})")
    by_people: dict[tuple[str, str], list[int]] = {}
    for k in np.flatnonzero(p.diff):
        by_people.setdefault(tuple(sorted((samples[p.i[k]].person, samples[p.j[k]].person))), []).append(int(k))
    print("\nclosest different people (max cosine with its pair's larger |yaw| and smaller px; median, n):")
    ranked = sorted(by_people.items(), key=lambda kv: -max(p.cos[kv[1]]))
    for _, ks in ranked[:10]:
        k = max(ks, key=lambda k: p.cos[k])
        a, b = samples[p.i[k]], samples[p.j[k]]
        print(
            f"  {p.cos[k]:.3f}  {a.person} ({src[p.i[k]]} f{a.frame}) vs {b.person} ({src[p.j[k]]} f{b.frame})"
            f"  yaw {p.yaw[k]:.0f} px {p.px[k]:.0f}; median {np.median(p.cos[ks]):.3f} ({len(ks)})"
        )
    print()


def group_means(samples: list[Sample], min_px: float = 0.0, max_yaw: float = 181.0) -> list[dict]:
    """Track-like groups: one per (source, person) - per shrink size for shrunk stills - with the mean of
    its eligible faces' embeddings (re-normalised), median |yaw| and median size. Linking works on such
    means (quality-weighted track embeddings), so their cosines are the operating point's real input."""
    groups: dict[tuple, list[Sample]] = {}
    for s in samples:
        if s.face_px < min_px or (s.yaw is not None and abs(s.yaw) > max_yaw):
            continue
        tag = f"{s.source}@{round(s.face_px / 16) * 16}px" if s.kind == "still_small" else s.source
        groups.setdefault((s.person, tag, s.source), []).append(s)
    out = []
    for (person, tag, source), members in groups.items():
        mean = np.mean([m.emb for m in members], axis=0)
        yaws = [abs(m.yaw) for m in members if m.yaw is not None]
        out.append(
            {
                "person": person,
                "name": tag,
                "source": source,
                "emb": mean / max(float(np.linalg.norm(mean)), 1e-12),
                "yaw": float(np.median(yaws)) if yaws else float("nan"),
                "px": float(np.median([m.face_px for m in members])),
                "n": len(members),
            }
        )
    return out


def group_pairs(groups: list[dict]) -> tuple[list, list]:
    """(same, diff): (cosine, group a, group b) for same person across sources (lowest first) and for
    different people, within one source too (highest first)."""
    same, diff = [], []
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            ga, gb = groups[a], groups[b]
            truth = mt.same_person(ga["person"], gb["person"])
            if truth is None or (truth and ga["source"] == gb["source"]):
                continue  # unknown, or the same person in one source (trivially close)
            item = (float(ga["emb"] @ gb["emb"]), ga, gb)
            (same if truth else diff).append(item)
    same.sort(key=lambda t: t[0])
    diff.sort(key=lambda t: -t[0])
    return same, diff


def print_group_pairs(groups: list[dict], thr: float) -> None:
    """Cosines of group means: the lowest same-person and the highest different-people pairs."""
    same, diff = group_pairs(groups)

    def desc(g):
        return f"{g['person'][:18]:<18} {g['name'][:30]:<30} (yaw {g['yaw']:3.0f}, {g['px']:4.0f} px, n {g['n']:3})"

    def line(c, ga, gb):
        return f"  {c:6.3f}  {desc(ga)} vs {desc(gb)}"

    s = np.array([t[0] for t in same])
    d = np.array([t[0] for t in diff])
    print(
        f"track-level (group means): {len(groups)} groups; same-person cross-source pairs {s.size}: "
        f"min {s.min():.3f}, 5% {np.quantile(s, 0.05):.3f}, median {np.median(s):.3f}; different-people pairs "
        f"{d.size}: median {np.median(d):.3f}, 95% {np.quantile(d, 0.95):.3f}, max {d.max():.3f}; "
        f"same >= {thr:.2f}: {np.mean(s >= thr):.2f}, diff >= {thr:.2f}: {int((d >= thr).sum())}"
    )
    print("lowest same-person group pairs:")
    for item in same[:8]:
        print(line(*item))
    print("highest different-people group pairs:")
    for item in diff[:6]:
        print(line(*item))
    print()


CAND_PX = (24, 40, 60, 80)
CAND_YAW = (45, 60, 75, 90)


def recommend(samples: list[Sample], p: Pairs, name: str) -> dict:
    """The operating point, from track-level evidence (group means, as linking uses) checked face by face.

    For each candidate eligibility (least px, largest |yaw|): groups are built from eligible faces only;
    the threshold is midway between the different-people max and the same-person 5 % quantile of group
    pairs. Chosen: the widest yaw, then the smallest size, whose gap is >= 0.03, at which no eligible
    different-people *face* pair reaches the threshold, and where most same-person face pairs of the
    outermost yaw band and size band still reach it (a band that never links only adds noise to track
    means). Prints the grid so a reader can choose."""
    print("operating-point grid (track-level group means; face-level check on eligible faces;")
    print("  'edge yaw' / 'edge px': share of same-person face pairs >= thr in the outermost yaw / size band kept)")
    print(
        f"{'min px':>6} {'max yaw':>7} | {'same min':>8} {'same 5%':>8} {'diff max':>8} {'gap':>6} {'thr':>6} | "
        f"{'same>=thr':>9} {'face diff max':>13} {'edge yaw':>8} {'edge px':>8}"
    )
    px = np.array([s.face_px for s in samples])
    yaw = np.array([abs(s.yaw) if s.yaw is not None else 0.0 for s in samples])
    best = None
    for k, max_yaw in enumerate(CAND_YAW):
        for m, min_px in enumerate(CAND_PX):
            same, diff = group_pairs(group_means(samples, min_px, max_yaw))
            if not same or not diff:
                continue
            sv, dv = np.array([t[0] for t in same]), np.array([t[0] for t in diff])
            s5, dmax = float(np.quantile(sv, 0.05)), float(dv.max())
            thr = round((s5 + dmax) / 2, 2)
            ok = (px >= min_px) & (yaw <= max_yaw)
            both = ok[p.i] & ok[p.j]
            fdmax = float(p.cos[p.diff & both].max()) if (p.diff & both).any() else float("nan")
            lo_yaw = CAND_YAW[k - 1] if k else 0
            hi_px = CAND_PX[m + 1] if m + 1 < len(CAND_PX) else 1e9
            edge_yaw = p.cos[p.same & both & (p.yaw > lo_yaw)]
            edge_px = p.cos[p.same & both & (p.px < hi_px)]
            ey = float(np.mean(edge_yaw >= thr)) if edge_yaw.size else float("nan")
            ep = float(np.mean(edge_px >= thr)) if edge_px.size else float("nan")
            print(
                f"{min_px:>6} {max_yaw:>7} | {sv.min():8.3f} {s5:8.3f} {dmax:8.3f} {s5 - dmax:6.3f} {thr:6.2f} | "
                f"{np.mean(sv >= thr):9.2f} {fdmax:13.3f} {ey:8.2f} {ep:8.2f}"
            )
            good = s5 - dmax >= 0.03 and fdmax < thr and not ey < 0.5 and not ep < 0.5
            if good and (best is None or max_yaw > best[1]):
                best = (min_px, max_yaw, thr)
    print()
    out = {"embedder": name}
    if best is not None:
        out.update(min_embed_px=best[0], max_embed_yaw_deg=best[1], same_person_cosine=best[2])
    return out


def run(names: list[str]) -> list[dict]:
    recs = []
    for name in names:
        t0 = time.perf_counter()
        stack = make_stack(name)
        samples, chips = collect(stack)
        embed_all(stack, samples, chips)
        p = make_pairs(samples)
        emb = stack.embedder
        print(
            f"## {name}: {stack.name} (embedder {emb.name}, current operating point: cosine "
            f"{emb.same_person_cosine}, min {emb.min_embed_px} px, max yaw {emb.max_embed_yaw_deg} deg)\n"
        )
        people = sorted({s.person for s in samples})
        print(
            f"{len(samples)} labelled faces of {len(people)} people from "
            f"{len({s.source for s in samples})} sources; pairs: {int(p.same.sum())} same (cross-source), "
            f"{int(p.within.sum())} same (within one video), {int(p.diff.sum())} different "
            f"[{time.perf_counter() - t0:.0f} s]\n"
        )
        print("```")
        print_tables(p)
        rec = recommend(samples, p, name)
        thr = rec.get("same_person_cosine", emb.same_person_cosine)
        print_yaw_by_px(p, thr)
        print_groups(samples, p)
        print("all faces:")
        print_group_pairs(group_means(samples), thr)
        if "min_embed_px" in rec:
            print(
                f"only faces inside the suggested limits (>= {rec['min_embed_px']} px, |yaw| <= "
                f"{rec['max_embed_yaw_deg']} deg):"
            )
            print_group_pairs(group_means(samples, rec["min_embed_px"], rec["max_embed_yaw_deg"]), thr)
        print("```\n")
        print(f"auto-suggestion: {rec}\n")
        recs.append(rec)
    return recs


SET_SCORES = ("max", "top3", "all", "mean_emb")


def _track_sets(run: Path) -> tuple[dict, dict]:
    """(per track: label, video, clip, start, end; per track: its embedded faces as unit rows)."""
    import pyarrow.dataset as ds

    from benchmarks.identity_quality import track_labels

    labels = track_labels(run)
    tracks = ds.dataset(run / "tracks").to_table(columns=["track_id", "clip_id", "start_s", "end_s", "drop_reason"])
    faces = ds.dataset(run / "faces").to_table(columns=["track_id", "embedding"])
    sets: dict[str, list] = {}
    for tid, emb in zip(faces.column("track_id").to_pylist(), faces.column("embedding").to_pylist(), strict=True):
        if emb is not None:
            v = np.asarray(emb, np.float32)
            sets.setdefault(tid, []).append(v / np.linalg.norm(v))
    chain = _chains(run, tracks)
    info = {}
    for r in tracks.to_pylist():
        if r["drop_reason"] in (None, "fragment") and r["track_id"] in sets:
            lab = labels.get(r["track_id"], {})
            info[r["track_id"]] = dict(r, label=lab.get("label"), video=lab.get("video"), chain=chain[r["track_id"]])
    return info, {t: np.stack(v) for t, v in sets.items() if t in info}


def _chains(run: Path, tracks) -> dict[str, str]:
    """Per track, the first track of its chain: pieces of one appearance joined across length splits by
    position and time (:func:`datakit.passes.consolidate.split_chains`, with the run's settings)."""
    import json

    import pyarrow.dataset as ds

    from datakit.passes.consolidate import Continuity, length_splits, split_chains

    cfg = json.loads((run / "run.json").read_text())["config"]
    clips = ds.dataset(run / "clips").to_table()
    faces = ds.dataset(run / "faces").to_table(
        columns=["track_id", "video_id", "frame_index", "t_s", "bbox", "det_score"]
    )
    gates = Continuity(cfg["track_max_gap_s"], cfg["track_max_shift"], cfg["track_max_scale"], cfg["sample_fps"])
    codes = split_chains(tracks, faces, length_splits(clips), gates)
    ids = tracks.column("track_id").to_pylist()
    return {t: ids[c] for t, c in zip(ids, codes, strict=True)}


def _set_score(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    sims = np.sort((a @ b.T).ravel())[::-1]
    ma, mb = a.mean(0), b.mean(0)
    return {
        "max": float(sims[0]),
        "top3": float(sims[:3].mean()),
        "all": float(sims.mean()),
        "mean_emb": float(ma @ mb / np.linalg.norm(ma) / np.linalg.norm(mb)),
    }


def track_set_pairs(runs: list[Path]) -> dict[str, list[dict]]:
    """Scores of track pairs by kind: same_chain (pieces of one appearance, joined across length splits by
    position), same_within, same_across, diff, together (see the module docstring)."""
    out: dict[str, list[dict]] = {"same_chain": [], "same_within": [], "same_across": [], "diff": [], "together": []}
    for run in runs:
        info, sets = _track_sets(run)
        ids = sorted(info)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                ta, tb = info[a], info[b]
                if ta["chain"] == tb["chain"]:
                    out["same_chain"].append(_set_score(sets[a], sets[b]))
                    continue
                if ta["clip_id"] == tb["clip_id"] and ta["start_s"] <= tb["end_s"] and tb["start_s"] <= ta["end_s"]:
                    out["together"].append(_set_score(sets[a], sets[b]))
                    continue
                truth = mt.same_person(ta["label"], tb["label"])
                if truth is None:
                    continue
                kind = "diff" if not truth else "same_within" if ta["video"] == tb["video"] else "same_across"
                out[kind].append(_set_score(sets[a], sets[b]))
    return out


def print_track_sets(runs: list[Path]) -> None:
    """The track-set score distributions per pair kind and score, and where a threshold separates them."""
    pairs = track_set_pairs(runs)
    print(f"track sets of {', '.join(str(r) for r in runs)}\n")
    print("```")
    for score in SET_SCORES:
        print(f"{score}:")
        print(f"  {'kind':<12}" + HEAD)
        for kind, rows in pairs.items():
            print(f"  {kind:<12}" + _stats(np.array([r[score] for r in rows])))
        neg = [r[score] for k in ("diff", "together") for r in pairs[k]]
        pos = [r[score] for k in ("same_chain", "same_within", "same_across") for r in pairs[k]]
        if neg and pos:
            hi = max(neg)
            print(f"  highest different {hi:.3f}; same pairs above it: {np.mean(np.array(pos) > hi):.2f}")
    print("```\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedders", default="dlib,arcface", help="comma list of: dlib, arcface")
    parser.add_argument("--out", type=Path, default=None, help="also write the printed report to this file")
    parser.add_argument("--track-sets", type=Path, nargs="+", default=None, help="score track sets of these runs")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    tee = Tee()

    with redirect_stdout(tee):
        print(f"# Embedder calibration on real faces ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
        if args.track_sets:
            print_track_sets(args.track_sets)
        else:
            run([n.strip() for n in args.embedders.split(",") if n.strip()])
    if args.out:
        args.out.write_text(tee.text)


if __name__ == "__main__":
    main()
