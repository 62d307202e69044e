"""Evaluation of generated videos: benchmark case files, the field's identity metrics and a report.

- :mod:`~harmoview.evaluate.cases`: the JSONL case format (read, write, validate);
- :mod:`~harmoview.evaluate.assemble`: cases from a datakit run's identities;
- :mod:`~harmoview.evaluate.frames` / :mod:`~harmoview.evaluate.metrics` / :mod:`~harmoview.evaluate.text`:
  frame sampling and motion, FaceSim and multi-view FaceSim, CLIP text alignment;
- :mod:`~harmoview.evaluate.runner` / :mod:`~harmoview.evaluate.summary` / :mod:`~harmoview.evaluate.html`:
  the whole evaluation, its summary numbers and its page.
"""

from harmoview.evaluate.assemble import cases_from_run, read_identity_list
from harmoview.evaluate.cases import Case, CaseFileError, CaseIdentity, read_cases, write_cases
from harmoview.evaluate.runner import EvalConfig, Evaluator, evaluate

__all__ = [
    "Case",
    "CaseFileError",
    "CaseIdentity",
    "EvalConfig",
    "Evaluator",
    "cases_from_run",
    "evaluate",
    "read_cases",
    "read_identity_list",
    "write_cases",
]
