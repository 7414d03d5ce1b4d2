"""recops.validation: each kind of bad input fails with a message naming the column, the rule and an offending
value, and the full report plus Data Docs are written either way.

Tiny inline tables; the suites are the real ones in expectations/. Great Expectations is imported once per
session (the first validation), each validation then takes well under a second.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recops.columns import Columns
from recops.config import ColumnMapping, DataConfig, Paths, Settings, ValidationConfig
from recops.errors import DataValidationError
from recops.validation import validate_tables

EXPECTATIONS_DIR = Path(__file__).parents[2] / "expectations"
N_ROWS, N_USERS, N_ITEMS = 200, 20, 30
SOURCES = {
    "interactions": "data/external/events.csv",
    "users": "data/external/users.csv",
    "items": "data/external/items.csv",
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        root=tmp_path_factory.mktemp("project"),
        paths=Paths(expectations_dir=str(EXPECTATIONS_DIR)),
        data=DataConfig(columns=ColumnMapping(rating=Columns.RATING)),
        validation=ValidationConfig(min_rows=10, min_users=2, min_items=2),
    )


@pytest.fixture(scope="module")
def clean_interactions() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            Columns.USER_ID: np.arange(N_ROWS) % N_USERS,
            Columns.ITEM_ID: rng.integers(0, N_ITEMS, N_ROWS),
            Columns.TIMESTAMP: 881_250_949 + 60 * np.arange(N_ROWS),
            Columns.RATING: rng.integers(1, 6, N_ROWS).astype(float),
        }
    )


@pytest.fixture()
def interactions(clean_interactions: pd.DataFrame) -> pd.DataFrame:
    return clean_interactions.copy()


def users_table(n: int = N_USERS) -> pd.DataFrame:
    return pd.DataFrame({Columns.USER_ID: np.arange(n), "age": 30})


def items_table(n: int = N_ITEMS) -> pd.DataFrame:
    return pd.DataFrame({Columns.ITEM_ID: np.arange(n), "genres": "Drama"})


def failure_message(
    interactions: pd.DataFrame,
    settings: Settings,
    report_dir: Path,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
) -> str:
    """The DataValidationError message; also checks that the report and Data Docs were written before it."""
    with pytest.raises(DataValidationError) as caught:
        validate_tables(interactions, users, items, settings, SOURCES, report_dir)
    assert (report_dir / "validation.json").is_file()
    assert (report_dir / "data_docs" / "index.html").is_file()
    message = str(caught.value)
    assert message.startswith("data validation failed:")
    return message


def test_clean_tables_pass_and_return_summary(interactions, settings, tmp_path):
    metrics = validate_tables(interactions, users_table(), items_table(), settings, SOURCES, tmp_path)

    assert metrics["validation.success"] == 1.0
    assert metrics["validation.failed_expectations"] == 0.0
    assert metrics["validation.interactions.rows"] == N_ROWS
    assert metrics["validation.interactions.users"] == N_USERS
    assert metrics["validation.interactions.items"] == interactions[Columns.ITEM_ID].nunique()
    assert metrics["validation.users.rows"] == N_USERS
    assert all(isinstance(value, float) for value in metrics.values())
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["success"] is True
    assert set(report["tables"]) == {"interactions", "users", "items"}
    assert (tmp_path / "data_docs" / "index.html").is_file()


def test_missing_column_is_named(interactions, settings, tmp_path):
    message = failure_message(interactions.drop(columns=[Columns.TIMESTAMP]), settings, tmp_path)

    assert "interactions (data/external/events.csv), column 'timestamp': the column is missing" in message
    assert "user_id, item_id, rating" in message


def test_non_numeric_id_fails_with_the_offending_value(interactions, settings, tmp_path):
    interactions[Columns.USER_ID] = interactions[Columns.USER_ID].astype(object)
    interactions.loc[3, Columns.USER_ID] = "abc"

    message = failure_message(interactions, settings, tmp_path)

    assert "column 'user_id': ids must be non-negative integers" in message
    assert "1 of 200 rows fail, e.g. 'abc' at row 4" in message


def test_negative_id_fails(interactions, settings, tmp_path):
    interactions.loc[[4, 9], Columns.ITEM_ID] = [-3, -8]

    message = failure_message(interactions, settings, tmp_path)

    assert "column 'item_id': ids must be non-negative integers" in message
    assert "2 of 200 rows fail" in message
    assert "-3" in message and "-8" in message


def test_fractional_float_id_fails(interactions, settings, tmp_path):
    interactions[Columns.ITEM_ID] = interactions[Columns.ITEM_ID].astype(float)
    interactions.loc[5, Columns.ITEM_ID] = 2.5

    message = failure_message(interactions, settings, tmp_path)

    assert "column 'item_id': ids must be non-negative integers" in message
    assert "e.g. 2.5" in message


def test_null_in_key_column_reports_the_row(interactions, settings, tmp_path):
    interactions[Columns.ITEM_ID] = interactions[Columns.ITEM_ID].astype(float)
    interactions.loc[7, Columns.ITEM_ID] = np.nan

    message = failure_message(interactions, settings, tmp_path)

    assert "column 'item_id': values must not be empty: 1 of 200 rows are empty, e.g. row 8" in message
    assert "rows are data rows of each file, counted from 1 without the header line" in message


def test_rating_out_of_range_shows_the_ratings(interactions, settings, tmp_path):
    interactions.loc[[1, 2, 3], Columns.RATING] = [7.0, -1.0, 9.5]

    message = failure_message(interactions, settings, tmp_path)

    assert "column 'rating': values must be between 1 and 5: 3 of 200 rows fail" in message
    assert "e.g. 7.0 at row 2; -1.0 at row 3; 9.5 at row 4" in message


def test_timestamp_in_the_future_fails(interactions, settings, tmp_path):
    interactions.loc[0, Columns.TIMESTAMP] = 4_102_444_800  # 2100-01-01

    message = failure_message(interactions, settings, tmp_path)

    assert "column 'timestamp': values must be between 631152000 (1990-01-01 00:00:00 UTC) and" in message
    assert "1 of 200 rows fail, e.g. 4102444800 (2100-01-01 00:00:00 UTC)" in message


def test_timestamp_before_1990_fails(interactions, settings, tmp_path):
    interactions.loc[0, Columns.TIMESTAMP] = 500_000_000  # 1985-11-05

    message = failure_message(interactions, settings, tmp_path)

    assert "column 'timestamp'" in message
    assert "e.g. 500000000 (1985-11-05" in message


def test_timestamps_in_milliseconds_get_a_hint(interactions, settings, tmp_path):
    interactions[Columns.TIMESTAMP] *= 1000

    message = failure_message(interactions, settings, tmp_path)

    assert "200 of 200 rows fail" in message
    assert "check data.timestamp_unit" in message


def test_text_timestamps_fail_as_not_numbers_without_crashing(interactions, settings, tmp_path):
    interactions[Columns.TIMESTAMP] = pd.Series(["1997-12-04 15:55:49"] * N_ROWS, dtype=object)

    message = failure_message(interactions, settings, tmp_path)

    assert "column 'timestamp': timestamps must be numbers" in message
    assert "'1997-12-04 15:55:49'" in message
    assert "could not be checked" not in message


def test_a_word_deep_in_a_rating_column_is_shown_with_its_row_not_the_first_good_values(interactions, settings,
                                                                                         tmp_path):
    ratings = interactions[Columns.RATING].map("{:g}".format).astype(object)  # as a CSV reader leaves them
    ratings[[149, 180]] = "five"
    interactions[Columns.RATING] = ratings

    message = failure_message(interactions, settings, tmp_path)

    assert ("column 'rating': ratings must be numbers: 2 of 200 rows are not numbers, e.g. 'five' at rows 150, 181"
            in message)


def test_a_word_deep_in_a_timestamp_column_is_shown_with_its_row(interactions, settings, tmp_path):
    stamps = interactions[Columns.TIMESTAMP].astype(str).astype(object)
    stamps[[0, 1]] = ["1997-12-04 15:55:49", "now"]  # dates are fine: ingest converts them when all parse
    stamps[199] = "yesterday"
    interactions[Columns.TIMESTAMP] = stamps

    message = failure_message(interactions, settings, tmp_path)

    assert ("column 'timestamp': timestamps must be numbers (Unix seconds; check data.timestamp_unit): 1 of 200 "
            "rows are neither numbers nor dates, e.g. 'yesterday' at row 200") in message


def test_many_offending_values_show_the_first_distinct_ones_with_their_first_rows(interactions, settings, tmp_path):
    interactions[Columns.SPLIT] = "train"
    interactions.loc[10:19, Columns.SPLIT] = ["x"] * 5 + ["y", "z", "u", "v", "w"]
    limited = settings.model_copy(update={"validation": settings.validation.model_copy(
        update={"offending_examples": 3})})

    message = failure_message(interactions, limited, tmp_path)

    assert "10 of 200 rows fail, e.g. 'x' at rows 11, 12, 13, ...; 'y' at row 16; 'z' at row 17" in message
    assert "'u'" not in message


def test_duplicated_rows_are_shown(interactions, settings, tmp_path):
    duplicated = pd.concat([interactions, interactions.iloc[[10]]], ignore_index=True)
    user, item, timestamp = interactions.loc[10, [Columns.USER_ID, Columns.ITEM_ID, Columns.TIMESTAMP]].astype(int)

    message = failure_message(duplicated, settings, tmp_path)

    assert "columns 'user_id','item_id','timestamp': rows must be unique" in message
    assert "2 of 201 rows repeat another row's" in message
    assert f"e.g. ({user}, {item}, {timestamp}) at rows 11, 201" in message


def test_too_few_rows_fail(interactions, settings, tmp_path):
    message = failure_message(interactions.head(5), settings, tmp_path)

    assert "interactions (data/external/events.csv): the table must have at least 10 rows: it has 5" in message


def test_too_few_users_fail(interactions, settings, tmp_path):
    interactions[Columns.USER_ID] = 1

    message = failure_message(interactions, settings, tmp_path)

    assert "column 'user_id': the column must have at least 2 distinct values: it has 1" in message


def test_empty_table_fails_clearly(interactions, settings, tmp_path):
    message = failure_message(interactions.iloc[0:0], settings, tmp_path)

    assert "the table must have at least 10 rows: it has 0 rows (the table is empty" in message
    assert "could not be checked" not in message


def test_table_without_columns_fails_clearly(settings, tmp_path):
    message = failure_message(pd.DataFrame(), settings, tmp_path)

    assert "column 'user_id': the column is missing (the table has: no columns)" in message
    assert "it has 0 rows" in message


def test_users_table_missing_ids_are_listed(interactions, settings, tmp_path):
    message = failure_message(interactions, settings, tmp_path, users=users_table(N_USERS - 2))

    assert (
        "interactions (data/external/events.csv), column 'user_id': every user_id must appear in the users "
        "table (data/external/users.csv)"
    ) in message
    assert "20 of 200 rows fail, e.g. 18 at rows 19, 39, 59, ...; 19 at rows 20, 40, 60, ..." in message


def test_items_table_missing_ids_are_listed(interactions, settings, tmp_path):
    items = items_table().drop(index=[0, 1])
    expected_rows = int(interactions[Columns.ITEM_ID].isin([0, 1]).sum())

    message = failure_message(interactions, settings, tmp_path, items=items)

    assert "column 'item_id': every item_id must appear in the items table (data/external/items.csv)" in message
    rows = {item: [int(i) + 1 for i in np.flatnonzero(interactions[Columns.ITEM_ID] == item)[:3]] for item in (0, 1)}
    shown = {item: f"{item} at rows {', '.join(map(str, found))}" for item, found in rows.items()}
    assert f"{expected_rows} of 200 rows fail, e.g. " in message
    assert shown[0] in message and shown[1] in message


def test_ids_read_as_text_in_the_users_table_get_a_hint(interactions, settings, tmp_path):
    users = users_table().assign(**{Columns.USER_ID: lambda t: t[Columns.USER_ID].astype(str)})

    message = failure_message(interactions, settings, tmp_path, users=users)

    assert "every user_id must appear in the users table" in message
    assert "both files must write ids the same way" in message


def test_duplicated_id_in_items_table_fails(interactions, settings, tmp_path):
    items = pd.concat([items_table(), items_table().iloc[[4]]], ignore_index=True)

    message = failure_message(interactions, settings, tmp_path, items=items)

    assert "items (data/external/items.csv), column 'item_id': values must be unique" in message
    assert "e.g. 4" in message


def test_bad_split_value_fails(interactions, settings, tmp_path):
    interactions[Columns.SPLIT] = "train"
    interactions.loc[11, Columns.SPLIT] = "training"

    message = failure_message(interactions, settings, tmp_path)

    assert "column 'split': values must be one of 'train', 'valid', 'test': 1 of 200 rows fail" in message
    assert "e.g. 'training'" in message


def test_string_ids_pass_when_id_type_is_string(interactions, settings, tmp_path):
    string_ids = settings.model_copy(update={"data": DataConfig(id_type="string")})
    interactions[Columns.USER_ID] = "u" + interactions[Columns.USER_ID].astype(str)

    metrics = validate_tables(interactions, None, None, string_ids, SOURCES, tmp_path)

    assert metrics["validation.success"] == 1.0


def test_mapped_rating_column_must_exist(interactions, settings, tmp_path):
    message = failure_message(interactions.drop(columns=[Columns.RATING]), settings, tmp_path)

    assert "column 'rating': the column is missing" in message


def test_importing_recops_validation_does_not_import_great_expectations():
    code = "import sys, recops.validation; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert out.strip() == "False"


def test_a_column_of_numbers_stored_as_text_says_how_it_is_stored(interactions, settings, tmp_path):
    interactions[Columns.RATING] = interactions[Columns.RATING].map("{:g}".format).astype(object)

    message = failure_message(interactions, settings, tmp_path)

    assert "column 'rating': ratings must be numbers: the column is stored as object, although each value reads " \
           "as a number (e.g. " in message
    assert "store it as int64 or float64 numbers" in message


# ------------------------------------------------------------------------------ privacy (data minimisation)
def user_attributes(**columns) -> pd.DataFrame:
    return pd.DataFrame({Columns.USER_ID: np.arange(N_USERS), **columns})


def with_user_spec(settings: Settings, *categorical: str, **privacy) -> Settings:
    from recops.config import AttributeColumns, PrivacyConfig

    data = settings.data.model_copy(update={"user_attributes": AttributeColumns(id="uid", categorical=list(categorical))})
    return settings.model_copy(update={"data": data, "privacy": PrivacyConfig(**privacy)})


@pytest.mark.parametrize("values, kind", [
    ([f"person{n}@example.org" if n == 7 else "teacher" for n in range(N_USERS)], "e-mail"),
    (["+49 30 1234567" if n in (2, 3) else "de" for n in range(N_USERS)], "phone"),
    (["192.168.10.4" if n == 11 else "fr" for n in range(N_USERS)], "IPv4"),
    (["2001:db8::ff00:42:8329" if n == 0 else "us" for n in range(N_USERS)], "IPv6"),
])
def test_user_attributes_holding_direct_identifiers_fail_naming_rows_not_values(interactions, settings, tmp_path,
                                                                               values, kind):
    message = failure_message(interactions, with_user_spec(settings, "note"), tmp_path,
                              users=user_attributes(note=values))
    bad = [n for n, v in enumerate(values) if v not in ("teacher", "de", "fr", "us")]
    assert "column 'note'" in message and "must not hold e-mail addresses" in message
    assert f"{len(bad)} of {N_USERS} rows do, e.g. row" in message and str(bad[0] + 1) in message
    assert not any(str(values[n]) in message for n in bad)  # the identifiers themselves are never echoed


def test_a_text_attribute_that_singles_users_out_fails_unless_allowed(interactions, settings, tmp_path):
    names = [f"Firstname{n} Lastname{n}" for n in range(N_USERS)]
    message = failure_message(interactions, with_user_spec(settings, "nick"), tmp_path,
                              users=user_attributes(nick=names))
    assert "column 'nick'" in message and "at most 50% of the users" in message
    allowed = with_user_spec(settings, "nick", allow_identifier_columns=["nick"])
    assert validate_tables(interactions, user_attributes(nick=names), None, allowed, SOURCES,
                           tmp_path)["validation.success"] == 1.0
    few = ["de", "fr", "us", "it"] * (N_USERS // 4)  # 4 values among 20 users: fine
    assert validate_tables(interactions, user_attributes(nick=few), None, with_user_spec(settings, "nick"), SOURCES,
                           tmp_path)["validation.success"] == 1.0


def test_a_user_attribute_named_like_an_identifier_is_refused_before_anything_runs(interactions, settings, tmp_path):
    with pytest.raises(DataValidationError, match="'email'.*named like direct identifiers.*allow_identifier_columns"):
        validate_tables(interactions, user_attributes(email="x"), None, with_user_spec(settings, "email"), SOURCES,
                        tmp_path)
    for harmless in ("gender", "occupation", "zip_region", "tenure_days"):
        from recops.validation.privacy import IDENTIFIER_NAME
        assert not IDENTIFIER_NAME.search(harmless), harmless
