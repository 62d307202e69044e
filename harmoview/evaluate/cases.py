"""Benchmark case files: JSONL, one case per line, each a prompt, its identities and their reference views.

A line::

    {"case_id": "c001", "prompt": "...", "identities": [{"identity_id": "p17",
     "references": {"frontal": "refs/p17_frontal.jpg", "left": "refs/p17_left.jpg"}}],
     "expected_yaw_deg": [20, 60]}

Reference paths are relative to the case file's folder (or absolute). ``expected_yaw_deg`` is optional.
The format has no size limit: a 100-case / 52-identity benchmark like the paper's is 100 lines whose
identities repeat across cases.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from datakit.schema import VIEWS

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # ids name files (<case_id>.mp4), so no slashes or spaces


class CaseFileError(ValueError):
    """A case file that does not follow the format; the message names the file and line."""


@dataclass(slots=True)
class CaseIdentity:
    """One person of a case and their reference images by view slot."""

    identity_id: str
    references: dict[str, str]  # view -> image path as written in the file


@dataclass(slots=True)
class Case:
    """One benchmark case: generate a video of ``identities`` following ``prompt``."""

    case_id: str
    prompt: str
    identities: list[CaseIdentity]
    expected_yaw_deg: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)  # unknown keys are kept, so tools can annotate cases

    def to_json(self) -> dict:
        """The case as one JSON object (the file's line)."""
        data = {
            "case_id": self.case_id,
            "prompt": self.prompt,
            "identities": [{"identity_id": i.identity_id, "references": dict(i.references)} for i in self.identities],
        }
        if self.expected_yaw_deg is not None:
            data["expected_yaw_deg"] = list(self.expected_yaw_deg)
        return {**data, **self.extra}

    def reference_paths(self, root: Path) -> list[dict[str, Path]]:
        """Per identity, view -> absolute reference path (relative paths resolve against ``root``)."""
        return [{view: root / path for view, path in ident.references.items()} for ident in self.identities]


def _fail(where: str, message: str) -> None:
    raise CaseFileError(f"{where}: {message}")


def _parse_identity(data, where: str) -> CaseIdentity:
    if not isinstance(data, dict):
        _fail(where, "each identity must be an object with identity_id and references")
    identity_id, references = data.get("identity_id"), data.get("references")
    if not isinstance(identity_id, str) or not identity_id:
        _fail(where, "identity_id must be a non-empty string")
    if not isinstance(references, dict) or not references:
        _fail(where, f"identity {identity_id!r} needs references: an object of view -> image path")
    for view, path in references.items():
        if view not in VIEWS:
            _fail(where, f"identity {identity_id!r}: unknown view {view!r}; views are {', '.join(VIEWS)}")
        if not isinstance(path, str) or not path:
            _fail(where, f"identity {identity_id!r}: reference {view!r} must be an image path")
    return CaseIdentity(identity_id, dict(references))


def parse_case(data, where: str = "case") -> Case:
    """Validate one decoded JSON object and return it as a :class:`Case`."""
    if not isinstance(data, dict):
        _fail(where, "a case must be a JSON object")
    case_id, prompt, identities = data.get("case_id"), data.get("prompt"), data.get("identities")
    if not isinstance(case_id, str) or not _ID.match(case_id):
        allowed = "letters, digits, '_', '-', '.' (it names <case_id>.mp4)"
        _fail(where, f"case_id must be a string of {allowed}, got {case_id!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        _fail(where, f"case {case_id}: prompt must be a non-empty string")
    if not isinstance(identities, list) or not identities:
        _fail(where, f"case {case_id}: identities must be a non-empty list")
    parsed = [_parse_identity(item, f"{where} (case {case_id})") for item in identities]
    ids = [i.identity_id for i in parsed]
    if len(set(ids)) != len(ids):
        _fail(where, f"case {case_id}: an identity appears twice")
    yaw = data.get("expected_yaw_deg")
    if yaw is not None:
        if not (isinstance(yaw, list) and len(yaw) == 2 and all(isinstance(v, int | float) for v in yaw)):
            _fail(where, f"case {case_id}: expected_yaw_deg must be [lo, hi] in degrees")
        if not -180 <= yaw[0] <= yaw[1] <= 180:
            _fail(where, f"case {case_id}: expected_yaw_deg needs -180 <= lo <= hi <= 180, got {yaw}")
        yaw = (float(yaw[0]), float(yaw[1]))
    known = {"case_id", "prompt", "identities", "expected_yaw_deg"}
    extra = {k: v for k, v in data.items() if k not in known}
    return Case(case_id, prompt, parsed, yaw, extra)


def read_cases(path: str | Path) -> list[Case]:
    """Read and validate a case file; raises :class:`CaseFileError` naming the line of the first problem."""
    path = Path(path)
    if not path.is_file():
        raise CaseFileError(f"{path}: case file not found")
    cases: list[Case] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise CaseFileError(f"{where}: not JSON ({error.msg})") from None
        case = parse_case(data, where)
        if case.case_id in seen:
            _fail(where, f"case_id {case.case_id!r} is used twice")
        seen.add(case.case_id)
        cases.append(case)
    if not cases:
        raise CaseFileError(f"{path}: no cases")
    return cases


def write_cases(cases: list[Case], path: str | Path) -> Path:
    """Write cases as JSONL (validated by reading each back first, so a bad case never reaches disk)."""
    path = Path(path)
    ids = [parse_case(case.to_json(), f"case {case.case_id!r}").case_id for case in cases]
    if len(set(ids)) != len(ids):
        raise CaseFileError(f"{path}: case ids are not unique")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(case.to_json(), ensure_ascii=False) + "\n" for case in cases))
    return path
