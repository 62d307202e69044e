"""What a run reports: the end-of-run summary and the run.json record."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow.compute as pc

from datakit import schema
from datakit.clips.captions import NOT_CONFIGURED_HINT, CaptionSummary
from datakit.config import BuildConfig
from datakit.faces import FaceStack
from datakit.passes.samples import num_other_context
from datakit.store import RunDir

_PACKAGES = (
    "numpy",
    "pyarrow",
    "av",
    "opencv-python",
    "onnxruntime",
    "dlib-bin",
    "scenedetect",
    "ray",
    "insightface",
    "transformers",  # captions (qwen2.5-vl backend)
    "torch",
    "harmoview-toolkit",
)


@dataclass(slots=True)
class BuildSummary:
    """Counts and timings of a finished build (printed at the end, stored in run.json)."""

    out: str
    face_stack: str
    stack_notes: list[str]
    videos: dict[str, int]  # status -> count
    num_clips: int
    num_faces: int
    num_tracks: int
    tracks_dropped: dict[str, int]  # drop_reason -> tracks that failed that gate (datakit.passes.gates)
    clips_dropped: dict[str, int]  # drop_reason -> clips that failed that filter (datakit.clips.filters)
    num_identities: int
    num_multi_video_identities: int
    num_reference_views: int
    num_samples: int
    num_errors: int
    resumed_videos: int
    wall_s: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: caption stage (datakit.clips.captions): this run's counts, and clips that hold a caption now
    captions: dict = field(default_factory=dict)
    #: long videos (datakit.video.segments): how many were split, into how many segments, and why others were not
    long_videos: dict = field(default_factory=dict)
    #: per worker process ("host:pid") of this run: busy seconds, items (videos or segments) and videos
    workers: dict = field(default_factory=dict)
    #: samples with at least one reference from another context (recording) than their clip (datakit.passes.contexts)
    num_samples_other_context: int = 0
    #: contexts found in several videos: footage duplicated across files (re-uploads, copies)
    num_shared_contexts: int = 0
    #: videos redone because a file their marker records was missing or torn: {"videos": n, "example": why}
    redone: dict = field(default_factory=dict)
    #: videos removed from the run by ``reconcile_src`` (no longer in the source)
    num_removed_videos: int = 0

    @classmethod
    def from_run(
        cls,
        run: RunDir,
        stack: FaceStack,
        global_seconds: dict,
        *,
        wall_s: float,
        resumed: int,
        stage_seconds: dict,
        captions: CaptionSummary | None = None,
        workers: dict | None = None,
        redone: dict | None = None,
        removed: int = 0,
    ) -> BuildSummary:
        dim = stack.embedder.dim
        videos = run.read("videos", schema.VIDEOS)
        identities = run.read("identities", schema.identities_schema(dim))
        tracks = run.read("tracks", schema.tracks_schema(dim))
        dropped = Counter(r for r in tracks.column("drop_reason").to_pylist() if r is not None)
        clips = run.read("clips", schema.CLIPS)
        clips_dropped = Counter(r for r in clips.column("drop_reason").to_pylist() if r is not None)
        multi = int(pc.sum(pc.greater(identities["num_videos"], 1)).as_py() or 0) if identities.num_rows else 0
        samples = run.read("samples", schema.SAMPLES)
        return cls(
            out=str(run.root),
            face_stack=stack.name,
            stack_notes=list(stack.notes),
            videos=dict(Counter(videos["status"].to_pylist())),
            num_clips=clips.num_rows,
            num_faces=run.read("faces", schema.faces_schema(dim)).num_rows,
            num_tracks=tracks.num_rows,
            tracks_dropped=dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
            clips_dropped=dict(sorted(clips_dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
            num_identities=identities.num_rows,
            num_multi_video_identities=multi,
            num_reference_views=run.read("reference_views", schema.REFERENCE_VIEWS).num_rows,
            num_samples=samples.num_rows,
            num_errors=run.read("errors", schema.ERRORS).num_rows,
            resumed_videos=resumed,
            wall_s=wall_s,
            stage_seconds={
                **{k: round(v, 3) for k, v in stage_seconds.items()},
                **{f"global.{k}": round(v, 3) for k, v in global_seconds.items()},
            },
            captions={
                **(captions.to_dict() if captions else {"captioner": "none"}),
                "clips_with_caption": int(pc.sum(pc.is_valid(clips["caption"])).as_py() or 0),
            },
            long_videos=_long_videos(run),
            workers=dict(sorted((workers or {}).items())),
            num_samples_other_context=num_other_context(samples),
            num_shared_contexts=_shared_contexts(clips),
            redone=redone or {},
            num_removed_videos=removed,
        )

    def format(self) -> str:
        """Human-readable summary for the end of ``datakit build``."""
        status = ", ".join(f"{n} {s}" for s, n in sorted(self.videos.items())) or "no video files found"
        busiest = sorted(
            (
                (k, v)
                for k, v in self.stage_seconds.items()
                if k not in ("total", "global", "worker_peak_rss_mb") and v >= 0.05
            ),
            key=lambda kv: -kv[1],
        )[:6]
        lines = [
            f"datakit build finished in {self.wall_s:.1f} s -> {self.out}",
            f"  face stack : {self.face_stack}",
            *[f"               note: {n}" for n in self.stack_notes],
            f"  videos     : {sum(self.videos.values())} ({status})"
            + (f"; {self.resumed_videos} already done" if self.resumed_videos else ""),
            *self._resume_lines(),
            f"  clips {self.num_clips}"
            + _dropped(self.clips_dropped, "filters")
            + f", faces {self.num_faces}, tracks {self.num_tracks}"
            + _dropped(self.tracks_dropped, "gates"),
            f"  identities {self.num_identities} ({self.num_multi_video_identities} in several videos), "
            f"reference views {self.num_reference_views}, samples {self.num_samples}"
            f" ({self.num_samples_other_context} with references from another context)",
            f"  contexts   : {self.num_shared_contexts} recordings found in several videos (duplicate footage)",
            f"  captions   : {self._captions()}",
            f"  errors     : {self.num_errors}" + (f" (see {self.out}/errors)" if self.num_errors else ""),
        ]
        lv = self.long_videos
        if lv.get("split") or lv.get("not_split"):
            lines.append(
                f"  long videos: {lv.get('split', 0)} split into {lv.get('segments', 0)} segments"
                + "".join(f"; {n} not split ({why})" for why, n in lv.get("not_split", {}).items())
            )
            for path, v in lv.get("videos", {}).items():
                first = f"first pass {v['first_pass_s']:.1f} s in {v.get('first_pass_ranges', 1)} ranges"
                lines.append(f"    {path}: {v['segments']} segments on {v['workers']} workers ({first})")
        if self.workers:
            busy = ", ".join(
                f"{w['busy_s']:.1f} s" + (f" (longest wait {w['max_idle_s']:.1f} s)" if "max_idle_s" in w else "")
                for w in self.workers.values()
            )
            lines.append(f"  workers    : {len(self.workers)} busy ({busy})")
        if self.stage_seconds.get("worker_peak_rss_mb"):
            lines.append(f"  memory     : peak worker RSS {self.stage_seconds['worker_peak_rss_mb']:.0f} MB")
        if busiest:  # worker seconds summed over videos: where the time went
            lines.append("  time       : " + ", ".join(f"{k} {v:.1f} s" for k, v in busiest))
        return "\n".join(lines)

    def _resume_lines(self) -> list[str]:
        """What a resume changed besides continuing: videos redone (torn files), videos removed (--reconcile-src)."""
        lines = []
        if self.redone:
            why = self.redone.get("example", "")
            lines.append(f"  redone     : {self.redone.get('videos', 0)} videos redone: files missing or torn ({why})")
        if self.num_removed_videos:
            lines.append(f"  removed    : {self.num_removed_videos} videos removed from the run: no longer in --src")
        return lines

    def _captions(self) -> str:
        c = self.captions or {"captioner": "none"}
        held = c.get("clips_with_caption", 0)
        if c.get("captioner", "none") == "none":
            return (f"{held} clips hold a caption; " if held else "") + NOT_CONFIGURED_HINT
        return CaptionSummary(**{k: v for k, v in c.items() if k != "clips_with_caption"}).format()

    def to_dict(self) -> dict:
        return asdict(self)


def _long_videos(run: RunDir) -> dict:
    """Counts from the first-pass plans of the long videos (``_plan/<video_id>.json``, small files), and per
    split video its segments, the workers they ran on and its first pass (from the video's marker)."""
    folder = run.root / "_plan"
    plans = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    split = [p for p in plans if p.get("split")]
    not_split = Counter(p.get("reason", "") for p in plans if not p.get("split"))
    videos = {}
    for p in split:
        vid = str(p.get("video_id", ""))
        marker = run.marker(vid) if re.fullmatch(r"[A-Za-z0-9_]+", vid) else None  # a plan file is untrusted
        done = json.loads(marker.read_text()) if marker is not None and marker.is_file() else {}
        videos[done.get("path", p.get("video_id"))] = {
            "segments": len(p["segments"]),
            "workers": len(done.get("workers", [])),
            "first_pass_s": round(float(p.get("seconds", 0.0)), 2),
            "first_pass_ranges": int(p.get("ranges", 1)),
        }
    return {
        "split": len(split),
        "segments": sum(len(p["segments"]) for p in split),
        "not_split": dict(not_split),
        "videos": videos,
    }


def _shared_contexts(clips) -> int:
    """How many contexts hold clips of more than one video."""
    videos: dict[str, set] = {}
    for ctx, video in zip(clips["context_id"].to_pylist(), clips["video_id"].to_pylist(), strict=True):
        if ctx is not None:
            videos.setdefault(ctx, set()).add(video)
    return sum(len(v) > 1 for v in videos.values())


def _dropped(counts: dict[str, int], by: str) -> str:
    """' (N dropped by the <by>: reason n, ...)', or '' when nothing was dropped."""
    if not counts:
        return ""
    reasons = ", ".join(f"{reason} {n}" for reason, n in counts.items())
    return f" ({sum(counts.values())} dropped by the {by}: {reasons})"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def run_record(
    cfg: BuildConfig, stack: FaceStack, started: float, *, state: str, summary: BuildSummary | None = None
) -> dict:
    """The run.json content."""
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "pipeline_version": schema.PIPELINE_VERSION,
        "state": state,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "config": cfg.to_dict(),
        "src_resolved": str(cfg.src.resolve()),  # what a resume compares its --src with (pipelines.resume)
        "face_stack": stack.describe(),
        "versions": _versions(),
        "summary": summary.to_dict() if summary else None,
    }
