"""Per-video steps: discovery, decoding, shots, long-video segments, face tracking, the clip quality scan,
reference candidates per track (:mod:`~datakit.video.crops`), and the per-video job that runs them
(:mod:`~datakit.video.job`) and turns what it saw into one video's Arrow rows (:mod:`~datakit.video.rows`)."""
