"""Reading users' own files through a column mapping, and the errors for files that cannot be read."""

import numpy as np
import pandas as pd
import pytest

from recops.columns import Columns
from recops.config import AttributeColumns, ColumnMapping, DataConfig
from recops.data import IdIndex, load_attributes, load_interactions
from recops.errors import RecopsError


def config(**kw):
    base = dict(source="file", interactions_path="x.csv",
                columns=ColumnMapping(user="uid", item="sku", timestamp="ts", rating="stars"))
    base.update(kw)
    return DataConfig(**base)


def write(tmp_path, text, name="events.csv", mode="w"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_csv_columns_are_mapped_to_canonical_names(tmp_path):
    path = write(tmp_path, "uid,sku,ts,stars,extra\n1,10,1000,4,x\n2,11,2000,5,y\n")
    frame = load_interactions(path, config())
    assert list(frame.columns) == [Columns.USER_ID, Columns.ITEM_ID, Columns.TIMESTAMP, Columns.RATING]
    assert frame[Columns.TIMESTAMP].tolist() == [1000, 2000]


def test_parquet_with_millisecond_and_iso_timestamps(tmp_path):
    path = tmp_path / "events.parquet"
    pd.DataFrame({"uid": [1, 2], "sku": [3, 4], "ts": [1_000_000, 2_000_500], "stars": [1.0, 2.0]}).to_parquet(path)
    assert load_interactions(path, config(timestamp_unit="ms"))[Columns.TIMESTAMP].tolist() == [1000, 2000]
    csv = write(tmp_path, "uid,sku,ts,stars\n1,3,2020-01-01T00:00:10Z,1\n")
    assert load_interactions(csv, config(timestamp_unit="datetime"))[Columns.TIMESTAMP].tolist() == [1577836810]


def test_unparseable_timestamps_are_kept_for_validation_to_report(tmp_path):
    path = write(tmp_path, "uid,sku,ts,stars\n1,3,2020-01-01,1\n2,4,yesterday,2\n")
    frame = load_interactions(path, config(timestamp_unit="datetime"))
    assert frame[Columns.TIMESTAMP].tolist() == ["2020-01-01", "yesterday"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("uid,sku,stars\n1,2,3\n", "missing column 'ts' (for timestamp)"),
        ("", "the file is empty"),
        ("uid,sku,ts,stars\n", "has a header (uid, sku, ts, stars) but no rows"),
        (b"uid,sku,ts,stars\n1,2,3,4\n\xff\xfe,1,2,3\n", "not valid UTF-8 at byte 25 (line 3"),
        ("uid,sku,ts,stars\n1,2,3,4\n1,2,3,4,5,6\n", "malformed CSV"),
    ],
)
def test_unreadable_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(RecopsError) as err:
        load_interactions(path, config())
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_file_says_which_param_to_fix(tmp_path):
    with pytest.raises(RecopsError, match="file not found"):
        load_interactions(tmp_path / "nope.csv", config())


def test_attribute_table_keeps_declared_columns_under_the_canonical_id(tmp_path):
    path = write(tmp_path, "sku,color,price,noise\n10,red,3.5,z\n", name="items.csv")
    spec = AttributeColumns(id="sku", numeric=["price"], categorical=["color"])
    frame = load_attributes(path, spec, Columns.ITEM_ID, config())
    assert list(frame.columns) == [Columns.ITEM_ID, "price", "color"]


def test_id_index_numbers_users_by_first_interaction_and_is_reversible():
    frame = pd.DataFrame({Columns.USER_ID: [30, 10, 30, 20], Columns.ITEM_ID: [7, 5, 9, 5],
                          Columns.TIMESTAMP: [1, 2, 3, 1]})
    index = IdIndex.from_interactions(frame)
    encoded = index.encode(frame)
    assert index.user_ids.tolist() == [30, 20, 10]  # first interaction time, ties in row order; never id order
    assert encoded[Columns.USER].tolist() == [0, 2, 0, 1]
    assert index.item_ids.tolist() == [5, 7, 9] and index.item_ids[encoded[Columns.ITEM]].tolist() == [7, 5, 9, 5]
    users, items = index.to_frames()
    assert IdIndex.from_frames(users, items).user_ids.tolist() == [30, 20, 10]
    with pytest.raises(KeyError, match="1 unknown user ids, e.g. \\[11\\]"):
        index.user_index(np.array([10, 11]))


def test_renaming_users_keeps_every_users_number():
    """What makes a pseudonymised run score as the raw run: the numbering depends on the rows, not the ids."""
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 1_000, 5_000)
    frame = pd.DataFrame({Columns.USER_ID: raw, Columns.ITEM_ID: rng.integers(0, 50, 5_000),
                          Columns.TIMESTAMP: rng.integers(0, 300, 5_000)})
    renamed = frame.assign(**{Columns.USER_ID: (raw * 7_919 + 13) % 1_000_003})  # another id for everyone
    a, b = IdIndex.from_interactions(frame), IdIndex.from_interactions(renamed)
    assert np.array_equal(a.encode(frame)[Columns.USER], b.encode(renamed)[Columns.USER])


def test_gzip_logs_are_read_and_a_fake_or_cut_gzip_is_named(tmp_path):
    import gzip

    text = "uid,sku,ts,stars\n1,10,1000,4\n2,11,2000,5\n"
    real = write(tmp_path, gzip.compress(text.encode()), name="events.csv.gz")
    assert load_interactions(real, config())[Columns.USER_ID].tolist() == [1, 2]
    fake = write(tmp_path, text, name="plain.csv.gz")  # a plain CSV named .gz used to end in a traceback
    with pytest.raises(RecopsError, match="not gzip-compressed") as err:
        load_interactions(fake, config())
    assert str(fake) in str(err.value)
    cut = write(tmp_path, gzip.compress(text.encode())[:-12], name="cut.csv.gz")
    with pytest.raises(RecopsError, match="damaged or truncated gzip"):
        load_interactions(cut, config())
    bad = write(tmp_path, gzip.compress(b"uid,sku,ts,stars\n1,2,3,4\n\xff\xfe,1,2,3\n"), name="bad.csv.gz")
    with pytest.raises(RecopsError, match="not valid UTF-8"):  # checked inside the compressed stream
        load_interactions(bad, config())


def test_integer_ids_beyond_int64_name_the_file_the_column_and_the_row(tmp_path):
    path = write(tmp_path, "uid,sku,ts,stars\n1,10,1000,4\n1234567890123456789012,11,2000,5\n")
    with pytest.raises(RecopsError) as err:
        load_interactions(path, config())
    message = str(err.value)
    assert str(path) in message and "'uid'" in message and "row 2: 1234567890123456789012" in message
    assert load_interactions(path, config(id_type="string"))[Columns.USER_ID].iloc[1] == "1234567890123456789012"
