"""The manifest contract: one Arrow schema per table, the versions stamped on every row.

Every table is a directory of Parquet files under the run directory (``<out>/<table>/*.parquet``),
readable as-is by pyarrow, pandas, polars, DuckDB and Ray Data. Ids are strings: ``video_id`` is a
content hash of the file, every other id derives from it and a position, so a re-run of the same
footage yields the same ids. Embeddings are ``fixed_size_list<float32>[D]`` where D is the embedder's.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1.0"
PIPELINE_VERSION = "datakit-0.5.0"

#: Reference view slots / view bins, in the model's slot order (see datakit.views).
VIEWS: tuple[str, ...] = ("frontal", "left", "right", "left_profile", "right_profile")

BBOX = pa.list_(pa.float32(), 4)  # x0, y0, x1, y1 in source pixels
LANDMARKS = pa.list_(pa.float32(), 10)  # 5 points (x, y): eye_r, eye_l, nose, mouth_r, mouth_l (image coords)


def embedding_type(dim: int) -> pa.DataType:
    """Arrow type of an embedding column of dimension ``dim``."""
    return pa.list_(pa.float32(), dim)


def _with_version(fields: list[pa.Field]) -> pa.Schema:
    return pa.schema([*fields, pa.field("pipeline_version", pa.string(), nullable=False)])


VIDEOS = _with_version(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # relative to the source root
        pa.field("status", pa.string(), nullable=False),  # ok | no_faces | failed | duplicate
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("num_frames", pa.int64()),  # frames actually decoded
        pa.field("size_bytes", pa.int64()),
        pa.field("error", pa.string()),
    ]
)

CLIPS = _with_version(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64(), nullable=False),  # exclusive
        pa.field("num_frames", pa.int64(), nullable=False),
        # The shot of the clip within its video (0, 1, ...): consecutive clips of one shot were split for length
        # (datakit.video.shots.ClipCutter), not by a cut, and one person's track pieces join across them.
        pa.field("shot", pa.int32(), nullable=False),
        pa.field("num_faces", pa.int32(), nullable=False),
        pa.field("num_tracks", pa.int32(), nullable=False),
        # Quality scores: per-video measures (datakit.video.quality), open_clip ones (datakit.clips.scores).
        pa.field("motion_score", pa.float32()),
        pa.field("sharpness", pa.float32()),
        pa.field("brightness", pa.float32()),
        pa.field("main_face_px", pa.float32()),
        pa.field("face_share", pa.float32()),
        pa.field("aesthetic_score", pa.float32()),  # null unless an aesthetic head is configured
        pa.field("clip_score", pa.float32()),  # image-text score; null unless open_clip and a caption exist
        pa.field("drop_reason", pa.string()),  # null = kept; else the first clip filter failed (datakit.clips.filters)
        # Duplicate footage (datakit.video.fingerprint, datakit.passes.contexts): clips of one recording share a
        # context_id (filled by the global pass; null in the per-video stage table).
        pa.field("context_id", pa.string()),
        pa.field("fingerprint", pa.list_(pa.int64())),  # 64-bit DCT hash of each sampled, non-flat frame
        pa.field("fingerprint_t_s", pa.list_(pa.float64())),  # the time of each of those frames
        # Captions (datakit.clips.captions): null when no captioner is configured.
        pa.field("caption", pa.string()),
        pa.field("caption_model", pa.string()),
        pa.field("caption_prompt_version", pa.string()),
    ]
)


def faces_schema(dim: int) -> pa.Schema:
    """Schema of ``faces``; ``embedding`` is null for faces that were not embedded (bounded per track)."""
    return _with_version(
        [
            pa.field("face_id", pa.string(), nullable=False),
            pa.field("clip_id", pa.string(), nullable=False),
            pa.field("track_id", pa.string(), nullable=False),
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("frame_index", pa.int64(), nullable=False),
            pa.field("t_s", pa.float64(), nullable=False),
            pa.field("bbox", BBOX, nullable=False),
            pa.field("landmarks", LANDMARKS),
            pa.field("det_score", pa.float32(), nullable=False),
            pa.field("face_px", pa.float32(), nullable=False),  # sqrt of the box area
            pa.field("sharpness", pa.float32(), nullable=False),
            pa.field("quality", pa.float32(), nullable=False),  # 0..1, see datakit.faces.quality
            pa.field("yaw_deg", pa.float32()),
            pa.field("pitch_deg", pa.float32()),
            pa.field("roll_deg", pa.float32()),
            pa.field("view", pa.string()),
            pa.field("embedding", embedding_type(dim)),
        ]
    )


def tracks_schema(dim: int) -> pa.Schema:
    """Schema of ``tracks``; ``identity_id`` is filled by the global identity pass."""
    return _with_version(
        [
            pa.field("track_id", pa.string(), nullable=False),
            pa.field("clip_id", pa.string(), nullable=False),
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("identity_id", pa.string()),  # null when the track failed a gate (see drop_reason)
            pa.field("drop_reason", pa.string()),  # null = kept; else the first gate it failed (datakit.passes.gates)
            pa.field("start_s", pa.float64(), nullable=False),
            pa.field("end_s", pa.float64(), nullable=False),
            pa.field("num_faces", pa.int32(), nullable=False),
            pa.field("num_embedded", pa.int32(), nullable=False),
            pa.field("views", pa.list_(pa.string()), nullable=False),
            pa.field("mean_quality", pa.float32(), nullable=False),
            pa.field("embedding", embedding_type(dim)),  # null when no face could be embedded
        ]
    )


def identities_schema(dim: int) -> pa.Schema:
    """Schema of ``identities``: one row per person found across the whole run."""
    return _with_version(
        [
            pa.field("identity_id", pa.string(), nullable=False),
            pa.field("num_tracks", pa.int32(), nullable=False),
            pa.field("num_clips", pa.int32(), nullable=False),
            pa.field("num_videos", pa.int32(), nullable=False),
            pa.field("num_faces", pa.int32(), nullable=False),
            pa.field("views", pa.list_(pa.string()), nullable=False),
            pa.field("video_ids", pa.list_(pa.string()), nullable=False),
            pa.field("centroid", embedding_type(dim)),
        ]
    )


#: Candidate reference crops kept per video (internal stage table, read by the global passes).
CROPS = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("crop", pa.binary(), nullable=False),  # JPEG, head crop (box grown 1.6x), long side <= crop_max_side
        pa.field("crop_width", pa.int32(), nullable=False),
        pa.field("crop_height", pa.int32(), nullable=False),
        pa.field("face_box", pa.list_(pa.float32(), 4), nullable=False),  # x0,y0,x1,y1 in crop pixels
        pa.field("thumb", pa.binary(), nullable=False),  # 32x32 uint8 gray of the crop: near-duplicate descriptor
    ]
)

REFERENCE_VIEWS = _with_version(
    [
        pa.field("identity_id", pa.string(), nullable=False),
        pa.field("view", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # 0 = best in this (identity, view)
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("context_id", pa.string()),  # the clip's recording (datakit.passes.contexts)
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("t_s", pa.float64(), nullable=False),
        pa.field("yaw_deg", pa.float32()),
        pa.field("pitch_deg", pa.float32()),
        pa.field("roll_deg", pa.float32()),
        pa.field("quality", pa.float32(), nullable=False),
        pa.field("crop", pa.binary(), nullable=False),
        pa.field("face_box", pa.list_(pa.float32(), 4), nullable=False),  # x0,y0,x1,y1 in crop pixels
    ]
)

SAMPLE_REFERENCE = pa.struct(
    [
        pa.field("view", pa.string()),
        pa.field("face_id", pa.string()),
        pa.field("clip_id", pa.string()),
        pa.field("same_clip", pa.bool_()),  # true only when no other clip could supply this view
        pa.field("context_id", pa.string()),  # the reference clip's recording
        pa.field("same_context", pa.bool_()),  # true when it shows the target clip's recording (a copy or itself)
        pa.field("crop", pa.binary()),
        pa.field("face_box", pa.list_(pa.float32(), 4)),  # x0,y0,x1,y1 in crop pixels
    ]
)
SAMPLE_IDENTITY = pa.struct(
    [
        pa.field("identity_id", pa.string()),
        pa.field("track_ids", pa.list_(pa.string())),
        pa.field("references", pa.list_(SAMPLE_REFERENCE)),
    ]
)
SAMPLES = _with_version(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("context_id", pa.string()),  # the target clip's recording (datakit.passes.contexts)
        pa.field("video_path", pa.string(), nullable=False),  # relative to the source root
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("identities", pa.list_(SAMPLE_IDENTITY), nullable=False),
    ]
)

#: Identity-disjoint train/eval assignment (datakit.tools.splits): one row per identity and one per sample.
SPLITS = _with_version(
    [
        pa.field("kind", pa.string(), nullable=False),  # identity | sample
        pa.field("item_id", pa.string(), nullable=False),  # the identity_id or sample_id
        pa.field("split", pa.string(), nullable=False),  # train | eval | excluded (samples only)
        pa.field("identity_ids", pa.list_(pa.string()), nullable=False),  # a sample's people; [itself] for identity
        pa.field("reason", pa.string()),  # why: forced (--eval-identities), random, or a sample's exclusion
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("eval_fraction", pa.float64(), nullable=False),
    ]
)

ERRORS = _with_version(
    [
        pa.field("stage", pa.string(), nullable=False),  # discover | probe | decode | faces | global ...
        pa.field("item", pa.string(), nullable=False),  # the file (relative path) or id concerned
        pa.field("video_id", pa.string()),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)
