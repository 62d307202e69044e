"""Per-clip stages over a run's clips: one base for the resumable ones (:mod:`datakit.clips.base`),
captions (:mod:`datakit.clips.captions`), open_clip scores (:mod:`datakit.clips.scores`, the model in
:mod:`datakit.clips.open_clip`) and the clip filters (:mod:`datakit.clips.filters`). Pure: the Ray pools
that run them over a whole run live in :mod:`pipelines`; their order is :mod:`datakit.passes.runner`."""
