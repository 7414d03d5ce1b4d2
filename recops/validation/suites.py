"""Reading the expectation suites in ``paths.expectations_dir`` and choosing which expectations apply to a run.

The suites (one Great Expectations 1.x ExpectationSuite JSON file per table) are the catalogue of checks; this
module only decides, from params and the table at hand, which of them make sense to evaluate. It works on plain
dicts and never imports Great Expectations, so reading a suite costs nothing.

An expectation is left out of a run when:

- its ``meta.recops`` says it applies only in another configuration (``only_if_mapped``: a column mapped in
  ``data.columns``; ``only_if_id_type``: ``data.id_type``; ``only_if_table``: an attribute table was given);
- it names a column the table lacks (the table's ``expect_column_to_exist`` expectations report required
  columns; optional ones such as ``split`` are simply not checked when absent);
- it compares values with numbers (``..._to_be_between``) and the column does not hold numbers, which the
  column's type expectation reports with examples instead of Great Expectations raising a TypeError.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from recops.config import Settings
from recops.errors import RecopsError

log = logging.getLogger(__name__)

# Expectations whose check compares values with numbers: evaluating them on text raises inside GX.
_NUMERIC_COMPARISONS = frozenset(
    {
        "expect_column_values_to_be_between",
        "expect_column_min_to_be_between",
        "expect_column_max_to_be_between",
        "expect_column_mean_to_be_between",
        "expect_column_median_to_be_between",
        "expect_column_sum_to_be_between",
    }
)
_COLUMN_KWARGS = ("column", "column_A", "column_B")


@dataclass(frozen=True)
class SkippedExpectation:
    type: str
    kwargs: dict[str, Any]
    reason: str


def load_suite(path: Path) -> dict[str, Any]:
    """The suite file as a dict with at least ``name`` and ``expectations``; a bad file raises RecopsError."""
    if not path.is_file():
        raise RecopsError(
            f"expectation suite not found: {path} (paths.expectations_dir must hold interactions.json, "
            "users.json and items.json)"
        )
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecopsError(f"{path}: not a valid JSON expectation suite ({exc})") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise RecopsError(f"{path}: expected a JSON object with a list under 'expectations'")
    for position, expectation in enumerate(suite["expectations"]):
        if not isinstance(expectation, dict) or not isinstance(expectation.get("type"), str):
            raise RecopsError(f"{path}: expectation #{position + 1} needs a 'type' (e.g. expect_column_to_exist)")
    return suite


def referenced_columns(kwargs: dict[str, Any]) -> list[str]:
    columns = [kwargs[key] for key in _COLUMN_KWARGS if isinstance(kwargs.get(key), str)]
    columns.extend(kwargs.get("column_list") or [])
    return columns


def applicable_expectations(
    suite: dict[str, Any], frame: pd.DataFrame, settings: Settings, given_tables: set[str]
) -> tuple[list[dict[str, Any]], list[SkippedExpectation]]:
    """Split the suite's expectations into those to evaluate on ``frame`` and those left out, with why."""
    kept: list[dict[str, Any]] = []
    skipped: list[SkippedExpectation] = []
    for expectation in suite["expectations"]:
        reason = _reason_to_skip(expectation, frame, settings, given_tables)
        if reason is None:
            kept.append(expectation)
        else:
            skipped.append(SkippedExpectation(expectation["type"], dict(expectation.get("kwargs") or {}), reason))
    for item in skipped:
        log.debug("suite %s: not evaluating %s %s: %s", suite.get("name"), item.type, item.kwargs, item.reason)
    return kept, skipped


def _reason_to_skip(
    expectation: dict[str, Any], frame: pd.DataFrame, settings: Settings, given_tables: set[str]
) -> str | None:
    conditions = (expectation.get("meta") or {}).get("recops") or {}
    mapped = conditions.get("only_if_mapped")
    if mapped is not None and getattr(settings.data.columns, mapped, None) is None:
        return f"data.columns.{mapped} is not set"
    id_type = conditions.get("only_if_id_type")
    if id_type is not None and settings.data.id_type != id_type:
        return f"data.id_type is '{settings.data.id_type}', not '{id_type}'"
    table = conditions.get("only_if_table")
    if table is not None and table not in given_tables:
        return f"no {table} table was given"
    if expectation["type"] == "expect_column_to_exist":
        return None
    kwargs = expectation.get("kwargs") or {}
    missing = [column for column in referenced_columns(kwargs) if column not in frame.columns]
    if missing:
        return f"column(s) {', '.join(missing)} absent"
    if expectation["type"] in _NUMERIC_COMPARISONS and not holds_numbers(frame[kwargs["column"]]):
        return f"column {kwargs['column']} does not hold numbers ({frame[kwargs['column']].dtype})"
    return None


def holds_numbers(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype)
