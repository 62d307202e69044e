"""datakit: curate raw footage into multi-view identity manifests (see ``datakit build --help``).

The steps and passes are pure (no Ray); ``pipelines`` runs them: ``from pipelines import build``.
"""

from datakit.config import BuildConfig
from datakit.schema import PIPELINE_VERSION, SCHEMA_VERSION, VIEWS
from datakit.views import ViewBins

__all__ = ["PIPELINE_VERSION", "SCHEMA_VERSION", "VIEWS", "BuildConfig", "ViewBins"]
