"""Turning Great Expectations validation results into a message a user can act on, and into flat metrics.

Works on the JSON form of the results (``ExpectationSuiteValidationResult.to_json_dict()``), so it needs no
Great Expectations import. One failed expectation becomes one line naming the table and its source file, the
column(s), the rule in plain words, how many rows break it and a few offending values with the rows that hold
them, e.g.::

    interactions (data/external/events.csv), column 'rating': values must be between 1 and 5: 3 of 1000 rows
    fail, e.g. 7.0 at row 12; -1.0 at rows 40, 41

Rows are numbered as in the table's file: row 1 is the first data row (a header line is not counted), so row N is
line N + 1 of a CSV file with a header. The tables reach validation in file order with a fresh index, so a
result's index is the row number minus one. Great Expectations reports the first offending rows
(``partial_unexpected_index_list``, in SUMMARY format); for a column of the wrong type it reports only the dtype,
so the values that are not numbers are found here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from recops.columns import Columns

# How many of a table's column names to list when a required column is missing.
_COLUMNS_SHOWN = 12
# How many members of a value set to spell out in a rule.
_SET_MEMBERS_SHOWN = 10
# How many rows to list for one offending value.
_ROWS_PER_VALUE = 3
ROW_NUMBERS = "rows are data rows of each file, counted from 1 without the header line"


def failed_results(validation: dict[str, Any]) -> list[dict[str, Any]]:
    return [result for result in validation.get("results", []) if not result.get("success")]


def describe_failure(
    result: dict[str, Any],
    table: str,
    frames: dict[str, pd.DataFrame],
    sources: dict[str, str],
    max_examples: int,
) -> str:
    """One line for one failed expectation of ``frames[table]`` (read from ``sources[table]``)."""
    frame = frames[table]
    config = result.get("expectation_config") or {}
    kind = config.get("type", "")
    kwargs = config.get("kwargs") or {}
    outcome = result.get("result") or {}
    exception = result.get("exception_info") or {}
    columns = _checked_columns(kind, kwargs)

    where = _table_label(table, sources)
    if columns:
        where += f", column{'s' if len(columns) > 1 else ''} " + ",".join(f"'{c}'" for c in columns)

    if kind == "expect_column_to_exist":
        present = [str(c) for c in frame.columns]
        shown = ", ".join(present[:_COLUMNS_SHOWN]) + (", ..." if len(present) > _COLUMNS_SHOWN else "")
        return f"{where}: the column is missing (the table has: {shown or 'no columns'}); {_mapping_hint(table)}"

    rule = _rule_in_words(config, sources)
    if exception.get("raised_exception"):
        return f"{where}: {rule}: could not be checked ({exception.get('exception_message')})"
    evidence = _evidence(kind, kwargs, outcome, frame, max_examples)
    other = ((config.get("meta") or {}).get("recops") or {}).get("only_if_table")
    if kind == "expect_column_pair_values_to_be_equal" and other in frames:
        evidence += _id_type_hint(frame, frames[other], str(kwargs.get("column_A")), other)
    return f"{where}: {rule}: {evidence}"


def failure_message(lines: list[str], report_path: str, docs_path: str) -> str:
    count = len(lines)
    rows = f"{ROW_NUMBERS}; " if any(" row " in line or " rows " in line for line in lines) else ""
    header = (
        f"data validation failed: {count} expectation{'s' if count != 1 else ''} not met "
        f"({rows}full report: {report_path}, Data Docs: {docs_path})"
    )
    return "\n".join([header, *(f"  - {line}" for line in lines)])


def summary_metrics(validations: dict[str, dict[str, Any]], frames: dict[str, pd.DataFrame]) -> dict[str, float]:
    """Flat metrics: rows and distinct ids per table, and how many expectations held."""
    metrics: dict[str, float] = {}
    evaluated = failed = 0
    for table, validation in validations.items():
        metrics[f"validation.{table}.rows"] = float(len(frames[table]))
        for result in validation.get("results", []):
            config = result.get("expectation_config") or {}
            observed = (result.get("result") or {}).get("observed_value")
            if config.get("type") == "expect_column_unique_value_count_to_be_between" and observed is not None:
                column = config["kwargs"]["column"]
                metrics[f"validation.{table}.{_plural(column)}"] = float(observed)
        statistics = validation.get("statistics") or {}
        evaluated += int(statistics.get("evaluated_expectations", 0))
        failed += int(statistics.get("unsuccessful_expectations", 0))
    metrics["validation.evaluated_expectations"] = float(evaluated)
    metrics["validation.failed_expectations"] = float(failed)
    metrics["validation.success"] = 1.0 if failed == 0 else 0.0
    return metrics


def _plural(column: str) -> str:
    names = {Columns.USER_ID: "users", Columns.ITEM_ID: "items"}
    return names.get(column, f"{column}.distinct")


def _id_type_hint(frame: pd.DataFrame, attributes: pd.DataFrame, column: str, other: str) -> str:
    """Ids read as numbers in one file and as text in the other never match; say so instead of listing them."""
    if column not in frame.columns or column not in attributes.columns or attributes.empty:
        return ""
    here, there = frame[column].dtype, attributes[column].dtype
    if pd.api.types.is_numeric_dtype(here) == pd.api.types.is_numeric_dtype(there):
        return ""
    return f" (ids are {here} here but {there} in the {other} table: both files must write ids the same way)"


def _mapping_hint(table: str) -> str:
    section = {"users": "data.user_attributes.id", "items": "data.item_attributes.id"}.get(table, "data.columns")
    return f"check {section} in params.yaml"


def _table_label(table: str, sources: dict[str, str]) -> str:
    source = sources.get(table)
    return f"{table} ({source})" if source else table


def _checked_columns(kind: str, kwargs: dict[str, Any]) -> list[str]:
    if kwargs.get("column_list"):
        return [str(c) for c in kwargs["column_list"]]
    if kind == "expect_column_pair_values_to_be_equal":
        # column_B is the lookup column recops adds for the foreign-key check; the user knows column_A.
        return [str(kwargs["column_A"])]
    if kwargs.get("column") is not None:
        return [str(kwargs["column"])]
    return []


def _rule_in_words(config: dict[str, Any], sources: dict[str, str]) -> str:
    """The suite's own ``description`` when it has one, else the rule phrased from the expectation's kwargs."""
    kind, kwargs = config.get("type", ""), config.get("kwargs") or {}
    if config.get("description"):
        rule = str(config["description"])
        other = ((config.get("meta") or {}).get("recops") or {}).get("only_if_table")
        if other and sources.get(other):
            rule += f" ({sources[other]})"
        return rule
    column = kwargs.get("column")
    if kind == "expect_column_values_to_not_be_null":
        return "values must not be empty"
    if kind in ("expect_column_values_to_be_between", "expect_table_row_count_to_be_between",
                "expect_column_unique_value_count_to_be_between"):
        subject = {
            "expect_column_values_to_be_between": "values must be",
            "expect_table_row_count_to_be_between": "the table must have",
            "expect_column_unique_value_count_to_be_between": "the column must have",
        }[kind]
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        one = (high if high is not None else low) == 1
        unit = {
            "expect_column_values_to_be_between": "",
            "expect_table_row_count_to_be_between": " row" if one else " rows",
            "expect_column_unique_value_count_to_be_between": " distinct value" if one else " distinct values",
        }[kind]
        low_text, high_text = _bound(low, column), _bound(high, column)
        if low is not None and high is not None:
            return f"{subject} between {low_text} and {high_text}{unit}"
        if low is not None:
            return f"{subject} at least {low_text}{unit}"
        return f"{subject} at most {high_text}{unit}"
    if kind == "expect_compound_columns_to_be_unique":
        return "rows must be unique"
    if kind == "expect_column_values_to_be_unique":
        return "values must be unique"
    if kind == "expect_column_values_to_be_in_set":
        members = list(kwargs.get("value_set") or [])
        shown = ", ".join(_value(v) for v in members[:_SET_MEMBERS_SHOWN])
        return f"values must be one of {shown}{', ...' if len(members) > _SET_MEMBERS_SHOWN else ''}"
    if kind == "expect_column_values_to_be_in_type_list":
        return f"values must be of type {', '.join(kwargs.get('type_list') or [])}"
    if kind == "expect_column_values_to_match_regex":
        return f"values must match {kwargs.get('regex')}"
    if kind == "expect_column_pair_values_to_be_equal":
        return f"values must equal those of '{kwargs.get('column_B')}'"
    shown_kwargs = {k: v for k, v in kwargs.items() if k != "batch_id"}
    return f"{kind} {shown_kwargs}"


def _evidence(kind: str, kwargs: dict[str, Any], outcome: dict[str, Any], frame: pd.DataFrame, limit: int) -> str:
    """How many rows break the rule and a few of them, or the observed value for table-level rules."""
    column = kwargs.get("column")
    if kind == "expect_column_values_to_be_in_type_list":
        # GX 1.x reports a pandas column of the wrong dtype as every row failing, with the first (good) values.
        return _type_evidence(frame, column, outcome.get("observed_value"), limit)
    if "unexpected_count" not in outcome:
        observed = outcome.get("observed_value")
        if kind == "expect_table_row_count_to_be_between" and observed == 0:
            return "it has 0 rows (the table is empty: check the input file and data.csv_separator)"
        return f"it has {_number(observed, column)}"

    count, total = outcome.get("unexpected_count", 0), outcome.get("element_count", len(frame))
    rows = _row_numbers(outcome, frame)
    if kind == "expect_column_values_to_not_be_null":
        shown = [row for row in rows[:limit] if row is not None]
        listed = f", e.g. row{'s' if len(shown) > 1 else ''} {', '.join(map(str, shown))}" if shown else ""
        return f"{count} of {total} rows are empty{listed}"
    values = list(outcome.get("partial_unexpected_list") or [])
    if kind == "expect_compound_columns_to_be_unique":
        names = kwargs.get("column_list") or []
        examples = [
            "(" + ", ".join(_value(row.get(name)) for name in names) + ")" if isinstance(row, dict) else _value(row)
            for row in values
        ]
        counted = f"{count} of {total} rows repeat another row's ({', '.join(names)})"
        return counted + _located(examples, rows, limit, str)
    if kind == "expect_column_pair_values_to_be_equal":
        column = kwargs.get("column_A")
        values = [pair[0] if isinstance(pair, (list, tuple)) and pair else pair for pair in values]
    if kwargs.get("regex_list") is not None or kind.endswith("_not_match_regex"):
        # the privacy checks (recops.validation.privacy): rows, never the values (they would be the identifiers)
        shown = [row for row in rows[:limit] if row is not None]
        listed = f", e.g. row{'s' if len(shown) > 1 else ''} {', '.join(map(str, shown))}" if shown else ""
        return f"{count} of {total} rows do{listed}"
    evidence = f"{count} of {total} rows fail" + _located(values, rows, limit, lambda v: _number(v, column))
    if kind == "expect_column_values_to_be_between" and column == Columns.TIMESTAMP:
        evidence += _timestamp_unit_hint(values, kwargs.get("max_value"))
    return evidence


def _row_numbers(outcome: dict[str, Any], frame: pd.DataFrame) -> list[int | None]:
    """The file row (1-based) of each of GX's first offending rows, aligned with ``partial_unexpected_list``;
    [] when GX gave no index list (or one of named index columns, which recops does not ask for)."""
    labels = outcome.get("partial_unexpected_index_list") or []
    if not labels or any(isinstance(label, (dict, list, tuple)) for label in labels):
        return []
    try:
        positions = frame.index.get_indexer(labels)
    except (TypeError, ValueError, pd.errors.InvalidIndexError):
        return []
    return [int(position) + 1 if position >= 0 else None for position in positions]


def _located(values: list[Any], rows: list[int | None], limit: int, show: Callable[[Any], str]) -> str:
    """``, e.g. 'five' at rows 5000, 5501; 'n/a' at row 12``: up to ``limit`` distinct offending values in the
    order GX found them, each with the first rows holding it."""
    found: dict[str, list[int]] = {}
    for position, value in enumerate(values):
        text = show(value)
        if text not in found:
            if len(found) >= limit:
                continue
            found[text] = []
        row = rows[position] if position < len(rows) else None
        if row is not None:
            found[text].append(row)
    return (", e.g. " + "; ".join(text + _at_rows(numbers) for text, numbers in found.items())) if found else ""


def _at_rows(rows: list[int]) -> str:
    if not rows:
        return ""
    listed = ", ".join(map(str, rows[:_ROWS_PER_VALUE])) + (", ..." if len(rows) > _ROWS_PER_VALUE else "")
    return f" at row{'s' if len(rows) > 1 else ''} {listed}"


def _type_evidence(frame: pd.DataFrame, column: str | None, observed: Any, limit: int) -> str:
    """The rows whose values are not numbers (timestamps: nor dates, which ingest converts when all of them
    parse), or, when each value reads as a number, how the column is stored."""
    if column is None or column not in frame.columns:
        return f"the column holds {observed} values"
    values = frame[column]
    dates = column == Columns.TIMESTAMP
    bad = _not_numbers(values, dates)
    if not len(bad):
        samples = _sample_values(frame, column, limit)
        return (f"the column is stored as {observed or values.dtype}, although each value reads as a number"
                + (" or a date" if dates else "") + (f" (e.g. {samples})" if samples else "")
                + ": store it as int64 or float64 numbers")
    what = "neither numbers nor dates" if dates else "not numbers"
    first = bad[: limit * _ROWS_PER_VALUE * 4]
    return (f"{len(bad)} of {len(values)} rows are {what}"
            + _located(values.iloc[first].tolist(), [int(i) + 1 for i in first], limit, _value))


def _not_numbers(values: pd.Series, dates: bool) -> np.ndarray:
    """Positions of the non-empty values that do not read as numbers (nor, with ``dates``, as dates)."""
    present = values.notna().to_numpy()
    try:
        numeric = pd.to_numeric(values, errors="coerce").isna().to_numpy()
    except (TypeError, ValueError):  # values pandas cannot even try (lists, dicts): none of them is a number
        numeric = np.ones(len(values), dtype=bool)
    bad = np.flatnonzero(present & numeric)
    if dates and len(bad):
        parsed = pd.to_datetime(values.iloc[bad].astype(str), errors="coerce", utc=True, format="mixed")
        bad = bad[parsed.isna().to_numpy()]
    return bad


def _timestamp_unit_hint(values: list[Any], latest: Any) -> str:
    """Timestamps a thousand times too large are almost always milliseconds read as seconds."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and isinstance(latest, (int, float)) and min(numbers) > 100 * latest:
        return " (these look like milliseconds or finer: check data.timestamp_unit in params.yaml)"
    return ""


def _distinct(values: list[Any], limit: int) -> list[Any]:
    seen: set[str] = set()
    out: list[Any] = []
    for value in values:
        key = repr(value)
        if key not in seen:
            seen.add(key)
            out.append(value)
        if len(out) >= limit:
            break
    return out


def _sample_values(frame: pd.DataFrame, column: str | None, limit: int) -> str:
    if column is None or column not in frame.columns:
        return ""
    head = frame[column].head(1000).dropna()
    return ", ".join(_value(v) for v in _distinct(head.tolist(), limit))


def _number(value: Any, column: str | None) -> str:
    """A value as the user would write it; Unix-second timestamps also as a UTC date."""
    text = _value(value)
    if column == Columns.TIMESTAMP and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return text
        return f"{text} ({moment:%Y-%m-%d %H:%M:%S} UTC)"
    return text


def _bound(value: Any, column: str | None) -> str:
    """A limit from params: 5.0 reads as 5."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _number(value, column)


def _value(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, str):
        return repr(value)
    return str(value)
