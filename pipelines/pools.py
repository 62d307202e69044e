"""Ray Data actor pools: one way to hand a run's config to the actors of a pool, and one way to build the
pool (resources, block count, actor count) from what a stage declares."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TypeVar

import ray

from datakit.config import BuildConfig
from pipelines.ray_runtime import init_ray

T = TypeVar("T")


def bind_config(worker: type[T], cfg: BuildConfig) -> type[T]:
    """``worker`` with this run's config as its ``cfg`` class attribute.

    The config then travels with the class definition instead of as actor constructor arguments in the
    object store, which Ray cannot restore if an actor restarts (and warns about on every run).
    """
    return type(worker.__name__, (worker,), {"cfg": cfg})


def cluster_gpus(cfg: BuildConfig) -> int:
    """GPUs of the run's Ray cluster (starting this run's Ray if it is not running yet)."""
    init_ray(cfg)
    return int(ray.cluster_resources().get("GPU", 0))


def actor_pool(
    worker: type,
    cfg: BuildConfig,
    items: list[dict],
    *,
    batch_size: int = 1,
    num_actors: int = 1,
    num_gpus: int = 0,
    env: Mapping[str, str] | None = None,
    prepare: Callable[[ray.data.Dataset], ray.data.Dataset] | None = None,
    expected_items: int | None = None,
) -> ray.data.Dataset:
    """``items`` through a pool of ``worker`` actors (a Ray Data callable class, given ``cfg`` here).

    One CPU per actor (plus ``num_gpus``); ``env``: environment variables of the actor processes. The
    items are cut into blocks of ``batch_size`` so that every actor gets work from the start, and no more
    actors start than there are blocks. ``prepare``: steps of the item dataset ahead of the pool (e.g. a
    ``flat_map`` that turns one item into several; ``expected_items``: how many items then reach the pool,
    at most). The dataset is lazy: iterating it runs the pool.
    """
    init_ray(cfg)
    blocks = max(1, math.ceil(len(items) / batch_size))
    resources: dict = {"num_cpus": 1}
    if num_gpus:
        resources["num_gpus"] = num_gpus
    if env:
        resources["runtime_env"] = {"env_vars": dict(env)}
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    if prepare is not None:
        ds = prepare(ds)
    return ds.map_batches(
        bind_config(worker, cfg),
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=min(num_actors, max(blocks, expected_items or 0))),
        **resources,
    )
