"""datakit: curate raw footage into multi-view identity manifests (see ``datakit build --help``)."""

from datakit.config import BuildConfig
from datakit.schema import PIPELINE_VERSION, SCHEMA_VERSION, VIEWS
from datakit.views import ViewBins

__all__ = ["PIPELINE_VERSION", "SCHEMA_VERSION", "VIEWS", "BuildConfig", "ViewBins", "build"]


def build(config: BuildConfig, *, progress: bool = True):
    """Run ``datakit build`` from Python; returns a :class:`pipelines.run_info.BuildSummary`."""
    from pipelines.build import build as _build

    return _build(config, progress=progress)
