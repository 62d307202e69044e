"""Per-clip stages over a run's clips: captions (:mod:`datakit.clips.captions`), open_clip scores
(:mod:`datakit.clips.scores`) and the clip filters (:mod:`datakit.clips.filters`). Pure: the Ray pools
that run them over a whole run live in :mod:`pipelines`."""
