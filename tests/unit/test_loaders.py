"""recops.data.loaders: ids beyond int64 however a reader types them, and timestamps kept or converted so that
validation can name the offending rows (issue 14)."""

from __future__ import annotations

import pandas as pd
import pytest

from recops.columns import Columns
from recops.config import AttributeColumns, ColumnMapping, DataConfig
from recops.data import load_attributes, load_interactions
from recops.errors import RecopsError


def config(**kw) -> DataConfig:
    base = dict(source="file", interactions_path="x.csv",
                columns=ColumnMapping(user="uid", item="sku", timestamp="ts"))
    return DataConfig(**{**base, **kw})


@pytest.mark.parametrize(("ids", "row"), [
    (["1", "-1", "9223372036854775808"], 3),   # read as text (a negative number beside one beyond uint64 range)
    (["1", "2", "9223372036854775808"], 3),    # read as uint64
    (["1", "u-17", "18446744073709551616"], 3),  # text with a word
])
def test_ids_beyond_int64_are_named_with_their_row_however_the_reader_types_them(tmp_path, ids, row):
    path = tmp_path / "log.csv"
    path.write_text("uid,sku,ts\n" + "".join(f"{uid},1,1600000000\n" for uid in ids))
    with pytest.raises(RecopsError) as caught:
        load_interactions(path, config())
    assert f"{path}, column 'uid': 1 id(s) beyond the 64-bit integer range" in str(caught.value)
    assert f"row {row}: {ids[row - 1]}" in str(caught.value)


def test_the_largest_and_smallest_int64_ids_are_accepted(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("uid,sku,ts\n9223372036854775807,1,1600000000\n-9223372036854775808,1,1600000000\n"
                    "9223372036854775806,1,1600000000\n")
    assert load_interactions(path, config())[Columns.USER_ID].tolist()[:2] == [2**63 - 1, -(2**63)]


def test_an_attribute_tables_id_beyond_int64_is_named_with_its_row(tmp_path):
    path = tmp_path / "users.csv"
    path.write_text("uid,age\n1,30\n1180591620717411303424,40\n")
    with pytest.raises(RecopsError, match=r"users.csv, column 'uid'.*row 2: 1180591620717411303424"):
        load_attributes(path, AttributeColumns(id="uid", numeric=["age"]), Columns.USER_ID, config())


def test_timestamps_stored_as_text_numbers_are_converted(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"uid": [1, 2], "sku": [1, 2], "ts": pd.Series(["1600000000000", "1600000001000"],
                                                              dtype="string")}).to_parquet(path)
    assert load_interactions(path, config(timestamp_unit="ms"))[Columns.TIMESTAMP].tolist() == [1600000000,
                                                                                             1600000001]


def test_a_word_among_timestamps_is_kept_as_given_for_validation_to_name(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("uid,sku,ts\n1,1,1600000000\n2,2,yesterday\n")
    assert load_interactions(path, config())[Columns.TIMESTAMP].tolist() == ["1600000000", "yesterday"]
