"""Ray Data actor pools: one way to hand a run's config to the actors of a pool."""

from __future__ import annotations

from typing import TypeVar

from datakit.config import BuildConfig

T = TypeVar("T")


def bind_config(worker: type[T], cfg: BuildConfig) -> type[T]:
    """``worker`` with this run's config as its ``cfg`` class attribute.

    The config then travels with the class definition instead of as actor constructor arguments in the
    object store, which Ray cannot restore if an actor restarts (and warns about on every run).
    """
    return type(worker.__name__, (worker,), {"cfg": cfg})
