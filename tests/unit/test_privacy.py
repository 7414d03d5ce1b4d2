"""recops.privacy: keyed pseudonyms, the key rule, and the files recops marks as holding pseudonyms."""

import hashlib
import hmac

import numpy as np
import pandas as pd
import pytest

from recops.errors import RecopsError
from recops.privacy import (
    MIN_KEY_BYTES,
    Pseudonymizer,
    fingerprint,
    mark_pseudonymized,
    pseudonym,
    pseudonym_key,
    pseudonymized_with,
    raw_text,
)

KEY = b"k" * MIN_KEY_BYTES


def test_a_pseudonym_is_the_first_63_bits_of_the_hmac_of_the_raw_ids_text():
    expected = int.from_bytes(hmac.new(KEY, b"13", hashlib.sha256).digest()[:8], "big") & ((1 << 63) - 1)
    assert pseudonym(KEY, "13") == expected
    assert pseudonym(KEY, "13") != pseudonym(b"j" * MIN_KEY_BYTES, "13")  # another key, another pseudonym
    # the API and the files agree on an integer id's text, whatever its spelling
    assert {raw_text(v, "integer") for v in (13, np.int64(13), 13.0, "13", " 013", "13.0")} == {"13"}
    assert raw_text("013", "string") == "013" and raw_text("abc", "integer") is None
    assert raw_text(True, "integer") is None and raw_text(float("nan"), "integer") is None


def test_a_column_is_pseudonymised_per_distinct_id_in_the_datas_type():
    pseudo = Pseudonymizer(KEY, "integer")
    out = pseudo.column(pd.Series([5, 7, 5, 9]), "t")
    assert out.dtype == "int64" and out[0] == out[2] == pseudonym(KEY, "5") and out.nunique() == 3
    assert (out >= 0).all()
    with_null = pseudo.column(pd.Series([5.0, None]), "t")
    assert with_null[0] == pseudonym(KEY, "5") and pd.isna(with_null[1])  # validation names the empty row
    text = Pseudonymizer(KEY, "string").column(pd.Series(["a", "b"]), "t")
    assert text.tolist() == [str(pseudonym(KEY, "a")), str(pseudonym(KEY, "b"))]
    with pytest.raises(RecopsError, match="users.csv.*not integer ids.*'x1'"):
        pseudo.column(pd.Series([1, "x1"], dtype=object), "users.csv")


def test_no_key_or_a_short_key_stops_with_the_variables_name_never_its_value(monkeypatch):
    monkeypatch.delenv("RECOPS_TEST_KEY", raising=False)
    with pytest.raises(RecopsError, match="RECOPS_TEST_KEY holds no key"):
        pseudonym_key("RECOPS_TEST_KEY")
    monkeypatch.setenv("RECOPS_TEST_KEY", "short-secret-value")
    with pytest.raises(RecopsError) as short:
        pseudonym_key("RECOPS_TEST_KEY")
    assert "short-secret-value" not in str(short.value) and f"at least {MIN_KEY_BYTES}" in str(short.value)
    monkeypatch.setenv("RECOPS_TEST_KEY", KEY.decode())
    assert pseudonym_key("RECOPS_TEST_KEY") == KEY
    assert len(fingerprint(KEY)) == 16 and KEY.decode() not in fingerprint(KEY)


def test_files_recops_wrote_with_pseudonyms_are_recognised_by_content(tmp_path):
    first, second = tmp_path / "events.csv", tmp_path / "other.csv"
    first.write_text("uid,sku\n1,2\n")
    second.write_text("uid,sku\n3,4\n")
    assert pseudonymized_with(first) is None  # nothing marked: raw
    mark_pseudonymized(first, fingerprint(KEY))
    assert pseudonymized_with(first) == fingerprint(KEY) and pseudonymized_with(second) is None
    old = first.read_bytes()
    first.write_text("uid,sku\n5,6\n")  # replaced by a raw file under the same name: raw again
    assert pseudonymized_with(first) is None
    first.write_bytes(old)  # the marked content put back (a refused snapshot restores the previous file)
    assert pseudonymized_with(first) == fingerprint(KEY)
