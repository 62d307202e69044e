"""Per-video steps: discovery, decoding, shots, long-video segments, face tracking, the clip quality scan,
and the per-video job that runs them and returns one video's rows (:mod:`datakit.video.job`)."""
