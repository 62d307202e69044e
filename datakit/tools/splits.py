"""Identity-disjoint train/eval splits of a run, written as the ``splits`` table (``datakit.schema.SPLITS``).

Every identity goes to exactly one split. Identities that appear together in a sample (people on screen
together) form a group, and groups are assigned whole, so that random assignment never splits a sample's
people. The groups are shuffled with ``seed`` (deterministic: the same run and seed give the same split)
and taken into ``eval`` while that keeps the eval identity count at most ``round(eval_fraction * N)``
(at least one group when that target is >= 1). Identities forced with ``eval_identities`` go to eval
first and count towards the target; their groups are not pulled along, so a sample holding a forced
identity and a train identity has people in both splits: such a sample is ``excluded`` from both and
counted (its row says why).

The table: one row per identity (``kind="identity"``, split train/eval, ``reason`` forced/random) and one
per sample (``kind="sample"``, split train/eval/excluded, ``identity_ids`` its people). A trainer reads
``kind == "sample" and split == "train"``; a benchmark takes its people from ``kind == "identity" and
split == "eval"``. The table is a snapshot: re-run ``datakit split`` after the identities change.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.schema import PIPELINE_VERSION, SPLITS
from datakit.store import RunDir

__all__ = ["SplitResult", "assign_splits", "read_identity_file", "split_run"]


@dataclass(slots=True)
class SplitResult:
    """The assignment and its counts."""

    identity_split: dict[str, str]  # identity_id -> train | eval
    sample_split: dict[str, str]  # sample_id -> train | eval | excluded
    table: pa.Table  # SPLITS rows
    path: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        """The counts as ``datakit split`` prints them."""
        c = self.counts
        where = f" -> {self.path}" if self.path else ""
        return (
            f"identities: {c.get('identities_train', 0)} train, {c.get('identities_eval', 0)} eval"
            f" ({c.get('identities_forced', 0)} forced)\n"
            f"samples: {c.get('samples_train', 0)} train, {c.get('samples_eval', 0)} eval,"
            f" {c.get('samples_excluded', 0)} excluded (people in both splits){where}"
        )


class _Groups:
    """Union-find over identity ids: people seen together in a sample end up in one group."""

    def __init__(self, items: list[str]) -> None:
        self.parent = {i: i for i in items}

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def assign_splits(
    identity_ids: Iterable[str],
    samples: Iterable[tuple[str, list[str]]],
    *,
    eval_fraction: float,
    seed: int,
    eval_identities: Iterable[str] = (),
) -> tuple[dict[str, str], dict[str, tuple[str, str | None]], dict[str, str]]:
    """(identity -> split, sample -> (split, reason), identity -> reason) for the rules of the module doc."""
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval fraction must be within 0..1, got {eval_fraction}")
    ids = sorted(set(identity_ids))
    samples = [(sid, list(people)) for sid, people in samples]
    known = set(ids)
    forced = set(eval_identities)
    unknown = sorted(forced - known)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ValueError(f"{len(unknown)} eval identities are not in the run: {shown}")
    free = [i for i in ids if i not in forced]
    groups = _Groups(free)
    for _, people in samples:
        members = [p for p in people if p in groups.parent]
        for other in members[1:]:
            groups.union(members[0], other)
    comps: dict[str, list[str]] = {}
    for i in free:
        comps.setdefault(groups.find(i), []).append(i)
    ordered = [comps[r] for r in sorted(comps)]
    order = np.random.default_rng(seed).permutation(len(ordered))
    target = round(eval_fraction * len(ids))
    split = {i: "eval" for i in forced}
    reason = {i: "forced" for i in forced}
    n_eval = len(forced)
    for j in order.tolist():
        comp = ordered[j]
        if n_eval + len(comp) <= target or (n_eval == 0 and target > 0):
            for i in comp:
                split[i], reason[i] = "eval", "random"
            n_eval += len(comp)
    for i in ids:
        if i not in split:
            split[i], reason[i] = "train", "random"
    sample_split: dict[str, tuple[str, str | None]] = {}
    for sid, people in samples:
        sides = {split.get(p, "train") for p in people}
        if len(sides) > 1:
            ev = sorted(p for p in people if split.get(p) == "eval")
            tr = sorted(p for p in people if split.get(p) != "eval")
            sample_split[sid] = ("excluded", f"people in both splits: eval {','.join(ev)}; train {','.join(tr)}")
        else:
            sample_split[sid] = (sides.pop() if sides else "train", None)
    return split, sample_split, reason


def read_identity_file(path: str | Path) -> list[str]:
    """Identity ids from a file: a JSON list, or one id per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"identity list {path} does not exist")
    text = path.read_text()
    if text.lstrip().startswith("["):
        data = json.loads(text)
        if not all(isinstance(x, str) for x in data):
            raise ValueError(f"{path}: expected a JSON list of identity id strings")
        return data
    return [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]


def split_run(
    run: str | Path,
    *,
    eval_fraction: float,
    seed: int = 0,
    eval_identities: Iterable[str] = (),
    write: bool = True,
) -> SplitResult:
    """Assign the identities and samples of ``run`` to train/eval; write ``<run>/splits/`` unless ``write=False``.

    Raises :class:`datakit.store.NotARunError` when ``run`` is not a run folder."""
    rundir = RunDir.open(run)
    ident = rundir.scan("identities", ["identity_id"])
    ids = ident.column("identity_id").to_pylist() if ident is not None else []
    samples = _sample_people(rundir)
    split, sample_split, reason = assign_splits(
        ids, samples, eval_fraction=eval_fraction, seed=seed, eval_identities=eval_identities
    )
    result = SplitResult(
        {k: split[k] for k in sorted(split)},
        {k: v[0] for k, v in sample_split.items()},
        _splits_table(split, reason, samples, sample_split, seed=seed, eval_fraction=eval_fraction),
        counts=_split_counts(split, reason, sample_split),
    )
    if write:
        with rundir.lock("split"):  # one writer at a time: a running build refuses it (RunLockedError)
            rundir.replace_table("splits", result.table)
        result.path = rundir.root / "splits"
    return result


def _sample_people(run: RunDir) -> list[tuple[str, list[str]]]:
    """(sample_id, identity ids of its people) for every sample of the run, in table order."""
    table = run.scan("samples", ["sample_id", "identities"])
    if table is None:
        return []
    people = pc.list_flatten(table.column("identities")).combine_chunks() if table.num_rows else None
    lengths = pc.list_value_length(table.column("identities")).to_numpy(zero_copy_only=False)
    flat = people.field("identity_id").to_pylist() if people is not None else []
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    return [(sid, flat[offsets[j] : offsets[j + 1]]) for j, sid in enumerate(table.column("sample_id").to_pylist())]


def _splits_table(
    split: dict[str, str],
    reason: dict[str, str],
    samples: list[tuple[str, list[str]]],
    sample_split: dict[str, tuple[str, str | None]],
    *,
    seed: int,
    eval_fraction: float,
) -> pa.Table:
    """The SPLITS rows: one per identity (sorted by id), then one per sample (in table order)."""
    rows = [("identity", i, split[i], [i], reason[i]) for i in sorted(split)]
    for sid, people in samples:
        side, why = sample_split[sid]
        rows.append(("sample", sid, side, sorted(set(people)), why))
    names = ("kind", "item_id", "split", "identity_ids", "reason")
    columns = {name: [row[j] for row in rows] for j, name in enumerate(names)}
    n = len(rows)
    return pa.table(
        {
            **columns,
            "seed": [int(seed)] * n,
            "eval_fraction": [float(eval_fraction)] * n,
            "pipeline_version": [PIPELINE_VERSION] * n,
        }
    ).cast(SPLITS)


def _split_counts(
    split: dict[str, str], reason: dict[str, str], sample_split: dict[str, tuple[str, str | None]]
) -> dict[str, int]:
    """The counts ``datakit split`` prints."""
    ic = Counter(split.values())
    sc = Counter(s for s, _ in sample_split.values())
    return {
        "identities_train": ic.get("train", 0),
        "identities_eval": ic.get("eval", 0),
        "identities_forced": sum(1 for r in reason.values() if r == "forced"),
        "samples_train": sc.get("train", 0),
        "samples_eval": sc.get("eval", 0),
        "samples_excluded": sc.get("excluded", 0),
    }
