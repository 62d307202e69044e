"""Identity metrics of a generated video: FaceSim (OpenS2V-Eval), multi-view FaceSim by yaw bin, detection rate.

FaceSim follows OpenS2V-Eval: in every sampled frame take the largest detected face, embed it, take its
cosine to the reference embedding clamped at 0, and average over the frames that have a face. A video
without any face has no FaceSim (None), not 0: a detection rate of 0 already says what went wrong.

Multi-view FaceSim compares each frame's face with every given reference view and keeps the best, so a
generated profile is judged against the profile reference; its breakdown by the generated face's yaw bin
(:class:`datakit.views.ViewBins`) shows whether identity holds when the head turns.

Small and turned faces: datakit embeds only faces of at least 80 px and |yaw| <= 45 deg when it *links*
identities, because a wrong merge poisons references. Evaluation instead scores every largest face, as
OpenS2V-Eval does, since excluding hard frames would flatter a model that turns heads away or shrinks
faces; it reports how many scored faces were small (``num_small_faces``) or turned (``num_turned_faces``)
and the yaw-bin breakdown keeps profile frames apart, so a reader sees where low scores come from.

Embedders: OpenS2V-Eval's FaceSim-Arc uses ArcFace; pass an insightface pack for numbers on that scale.
The default dlib embedder's cosines are compressed (on the stills the same person scores 0.95-0.999,
different people 0.80-0.89), so its FaceSim is only comparable with itself, and on profiles it barely
separates people (Hamilton's profile close-up: 0.89 for the right person, 0.86-0.88 for others, where
the ArcFace test pack gives 0.21 against 0.02-0.03).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datakit.faces import Face, FaceStack
from datakit.schema import VIEWS
from datakit.tools.photos import read_photo_bgr
from datakit.views import ViewBins
from harmoview.evaluate.frames import SampledFrame

SMALL_FACE_PX = 80.0  #: datakit's min_embed_px: below it embeddings are less reliable
TURNED_YAW_DEG = 45.0  #: datakit's max_embed_yaw_deg


class ReferenceError(ValueError):
    """A reference image that cannot be used (unreadable, or no face in it); the message names the file."""


@dataclass(slots=True)
class IdentityEmbeddings:
    """The reference embeddings of one identity, one per view slot that was given."""

    identity_id: str
    views: dict[str, np.ndarray]  # view -> (D,) unit vector

    @property
    def primary_view(self) -> str:
        """The view single-reference FaceSim uses: frontal when given, else the first slot in model order."""
        return next(view for view in (*VIEWS, *self.views) if view in self.views)


def _largest(faces: list[Face]) -> Face:
    return max(faces, key=lambda face: face.face_px)


def embed_reference(stack: FaceStack, image: str | Path | np.ndarray) -> np.ndarray:
    """The embedding of the largest face in a reference image (a path or a BGR array)."""
    name = str(image) if not isinstance(image, np.ndarray) else "<array>"
    if isinstance(image, np.ndarray):
        bgr = image
    else:
        try:  # datakit's photo reader: a pixel budget checked before decoding; max_side 0 keeps the full size
            bgr = read_photo_bgr(image, max_side=0)
        except (OSError, ValueError) as exc:
            raise ReferenceError(f"cannot read reference image {name}: {exc}") from None
    faces = stack.detect_photo(bgr)  # the photo path of datakit query / generate --ref: tight crops padded there
    if not faces:
        raise ReferenceError(f"no face found in reference image {name} by {stack.name}")
    return stack.embedder.embed([stack.embedder.chip(bgr, _largest(faces))])[0]


def embed_identity(stack: FaceStack, identity_id: str, references: dict[str, str | Path]) -> IdentityEmbeddings:
    """Embeddings of every reference view of one identity."""
    return IdentityEmbeddings(identity_id, {view: embed_reference(stack, path) for view, path in references.items()})


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _mean_of(rows: list[dict], key: str) -> float | None:
    return _mean([row[key] for row in rows if row[key] is not None])


def _detect_all(stack: FaceStack, samples: list[SampledFrame], max_faces: int) -> list[list[Face]]:
    detected = []
    for sample in samples:
        faces = sorted(stack.detect(sample.bgr), key=lambda face: -face.face_px)
        detected.append(faces[:max_faces])
    return detected


def face_metrics(
    stack: FaceStack, samples: list[SampledFrame], identities: list[IdentityEmbeddings], bins: ViewBins | None = None
) -> dict:
    """FaceSim, multi-view FaceSim (overall and per yaw bin) and detection rate of sampled frames.

    One identity: the largest face of each frame is scored (OpenS2V-Eval). Several identities: each
    identity is scored on the face of the frame that matches it best, so every person in a multi-person
    case is found (no one-to-one assignment: two identities may pick the same face). The case's FaceSim
    is the mean over its identities.
    """
    bins = bins or ViewBins()
    detected = _detect_all(stack, samples, max_faces=1 if len(identities) <= 1 else 8)
    chips, owners = [], []
    for frame_i, (sample, faces) in enumerate(zip(samples, detected, strict=True)):
        for face_i, face in enumerate(faces):
            chips.append(stack.embedder.chip(sample.bgr, face))
            owners.append((frame_i, face_i))
    vectors = stack.embedder.embed(chips) if chips else np.zeros((0, stack.embedder.dim), np.float32)
    by_frame: dict[int, list[tuple[Face, np.ndarray]]] = {}
    for (frame_i, face_i), vector in zip(owners, vectors, strict=True):
        by_frame.setdefault(frame_i, []).append((detected[frame_i][face_i], vector))

    num_with_face = sum(1 for faces in detected if faces)
    per_identity = [_identity_scores(identity, samples, by_frame, bins) for identity in identities]
    scored = [face for faces in detected for face in faces[:1]]
    return {
        "num_frames": len(samples),
        "num_frames_with_face": num_with_face,
        "detection_rate": num_with_face / len(samples) if samples else 0.0,
        "facesim": _mean_of(per_identity, "facesim"),
        "facesim_multiview": _mean_of(per_identity, "facesim_multiview"),
        "num_small_faces": sum(1 for face in scored if face.face_px < SMALL_FACE_PX),
        "num_turned_faces": sum(1 for face in scored if abs(face.yaw_deg or 0.0) > TURNED_YAW_DEG),
        "identities": per_identity,
    }  # fmt: skip


def _identity_scores(identity: IdentityEmbeddings, samples: list[SampledFrame], by_frame: dict, bins: ViewBins) -> dict:
    views = list(identity.views)
    refs = np.stack([identity.views[view] for view in views])  # (V, D)
    primary = views.index(identity.primary_view)
    frames, single, multi = [], [], []
    by_bin: dict[str, list[float]] = {}
    for frame_i, candidates in sorted(by_frame.items()):
        cosines = [np.clip(refs @ vector, 0.0, None) for _, vector in candidates]  # each (V,)
        best = int(np.argmax([c.max() for c in cosines]))  # one candidate when the case has one identity
        face, cos = candidates[best][0], cosines[best]
        view = bins(face.yaw_deg)
        single.append(float(cos[primary]))
        multi.append(float(cos.max()))
        by_bin.setdefault(view or "unknown", []).append(float(cos.max()))
        frames.append({
            "index": samples[frame_i].index, "t_s": round(samples[frame_i].t_s, 3), "face_px": round(face.face_px, 1),
            "yaw_deg": None if face.yaw_deg is None else round(float(face.yaw_deg), 1), "view": view,
            "facesim": round(float(cos[primary]), 4), "best_view": views[int(np.argmax(cos))],
        })  # fmt: skip
    return {
        "identity_id": identity.identity_id,
        "reference_views": views,
        "primary_view": identity.primary_view,
        "facesim": _mean(single),
        "facesim_multiview": _mean(multi),
        "by_yaw_bin": {view: {"facesim_multiview": _mean(v), "num_frames": len(v)} for view, v in by_bin.items()},
        "frames": frames,
    }


def yaw_in_range_rate(identity_scores: dict, yaw_range_deg: tuple[float, float]) -> float | None:
    """Share of an identity's scored frames whose face yaw lies in ``[lo, hi]`` (None without posed faces)."""
    lo, hi = yaw_range_deg
    yaws = [f["yaw_deg"] for f in identity_scores["frames"] if f["yaw_deg"] is not None]
    return sum(lo <= yaw <= hi for yaw in yaws) / len(yaws) if yaws else None
