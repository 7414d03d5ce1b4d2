"""Property tests of the event rules (recops.data.events), shared by ``POST /events`` and the snapshot's reader.

The key property: nothing the API accepts is unreadable by the snapshot reader. Any byte string either parses
and validates to an accepted event, or is refused with one of the documented errors (ValueError, which includes
JSONDecodeError and UnicodeDecodeError, or RecursionError from the parser; ValidationError from the model) and
never anything else; an accepted event, logged the way the server logs it, is read back by ``read_events``
without rejection and converts to the interaction log's columns; and the poisons of issue 14 (integers beyond
int64, NaN / Infinity, deep nesting, control characters, booleans as ids) are always refused.
"""

from __future__ import annotations

import json
import string
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from recops.config import Settings
from recops.data.events import (MAX_JSON_DIGITS, Event, as_interactions, event_problem, parse_strict_json,
                                read_events, validation_problems)
from recops.serving.event_log import SharedEventLog

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONTROL = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))]
int64s = st.integers(INT64_MIN, INT64_MAX) | st.sampled_from([INT64_MIN, INT64_MAX, 0, -1])
huge_ints = st.integers(min_value=INT64_MAX + 1) | st.integers(max_value=INT64_MIN - 1) \
    | st.sampled_from([2**63, 2**64, 2**70, -(2**63) - 1])
text_ids = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=300)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**25), 10**25) \
    | st.floats(0, 2e9) | st.sampled_from([1e308, 1e12, -0.0, 5e-324, 1.7e9])
json_leaves = st.none() | st.booleans() | int64s | numbers | st.text(max_size=20)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
field_values = int64s | huge_ints | text_ids | numbers | st.booleans() | st.none() | json_values
events = st.fixed_dictionaries({}, optional={"user_id": field_values, "item_id": field_values,
                                             "timestamp": field_values, "weight": field_values,
                                             "received_at": numbers, "extra": json_values})
# Events near the edge of what the API accepts (any int64, any text id of 1-256 characters without control
# characters, timestamps from 0 to now, weights in (0, 1e6]), with optional fields left out.
valid_ids = int64s | st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=256)
valid_events = st.fixed_dictionaries(
    {"user_id": valid_ids, "item_id": valid_ids},
    optional={"timestamp": st.floats(0, 1.7e9) | st.integers(0, 1_700_000_000),
              "weight": st.floats(5e-324, 1e6, exclude_min=False) | st.integers(1, 10**6)})


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)  # NaN / Infinity tokens on purpose: the parser must refuse them


def _nested(depth: int, opener: str) -> str:
    closer = {"[": "]", "{\"a\":": "}"}[opener]
    return opener * depth + "1" + closer * depth


bodies = st.one_of(
    st.binary(max_size=300),
    events.map(lambda e: _dumps(e).encode()),
    events.map(lambda e: _dumps({"events": [e]}).encode()),
    json_values.map(lambda v: _dumps(v).encode("utf-16") if isinstance(v, list) else _dumps(v).encode()),
    st.builds(_nested, st.integers(1, 5000), st.sampled_from(["[", "{\"a\":"])).map(str.encode),
    st.integers(1, 5000).map(lambda n: ('{"user_id": %s, "item_id": "1"}' % ("9" * n)).encode()),
    st.sampled_from([b"NaN", b"-Infinity", b'{"user_id": "1", "item_id": "1", "timestamp": 1e400}',
                     b"\xef\xbb\xbf{}", b"\xff\xfe", b"", b"   ", b"[" * 100_000]),
)


def accepted(body: bytes) -> Event | None:
    """The event a body becomes when the API would accept it, else None; fails the test on an undocumented
    error."""
    try:
        payload = parse_strict_json(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    for id_type in ("string", "integer"):  # the reader's check never raises either
        problem = event_problem(payload, id_type)
        assert problem is None or isinstance(problem, str)
    try:
        return Event.model_validate(payload)
    except ValidationError as exc:
        assert validation_problems(exc)  # a message naming the field(s)
        return None


def logged(event: Event) -> dict[str, Any]:
    """The record ``POST /events`` writes for ``event`` (recops/serving/api.py)."""
    now = time.time()
    return {"user_id": str(event.user_id), "item_id": str(event.item_id),
            "timestamp": event.timestamp if event.timestamp is not None else now, "weight": event.weight,
            "received_at": now}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("event-log")


def project(root: Path, id_type: str) -> Settings:
    return Settings.model_validate({"root": root, "data": {
        "source": "file", "interactions_path": "log.csv", "id_type": id_type,
        "columns": {"user": "uid", "item": "sku", "timestamp": "ts", "rating": "stars"}}})


def read_back(folder: Path, lines: list[str], id_type: str) -> tuple[Any, list[dict[str, Any]]]:
    path = folder / "events-20261123.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return read_events([path], id_type)


@SETTINGS
@given(body=bodies)
@example(body=b"[" * 2000 + b"]" * 2000)
@example(body=('{"user_id": %s, "item_id": "1", "timestamp": 1}' % ("1" * 5000)).encode())
@example(body=b'{"user_id": "1", "item_id": "1", "timestamp": Infinity}')
@example(body=b'{"user_id": true, "item_id": "1"}')
def test_any_body_is_an_accepted_event_or_a_documented_refusal(body):
    accepted(body)


@SETTINGS
@given(event=valid_events | events)
@example(event={"user_id": "a\u2028b", "item_id": "\u0085"})
@example(event={"user_id": INT64_MIN, "item_id": INT64_MAX, "timestamp": 0, "weight": 5e-324})
@example(event={"user_id": "x" * 256, "item_id": "\U0001f600" * 256, "timestamp": -0.0})
def test_an_event_the_api_accepts_is_read_back_by_the_snapshot_reader(event, folder):
    parsed = accepted(_dumps(event).encode())
    assume(parsed is not None)
    record = logged(parsed)
    writer_folder = folder / "writer"
    for stale in writer_folder.glob("*.jsonl"):
        stale.unlink()
    path = SharedEventLog(writer_folder).append([record])  # the server's own writer
    plain = json.dumps(record, ensure_ascii=False)          # and a log written without escapes (by hand, or older)
    for frame, rejected in (read_events([path], "string"), read_back(folder, [plain], "string")):
        assert rejected == []
        row = frame.iloc[0]
        assert (row["user_id"], row["item_id"]) == (record["user_id"], record["item_id"])
        assert (row["timestamp"], row["weight"]) == (record["timestamp"], record["weight"])


@SETTINGS
@given(user=int64s, item=int64s, timestamp=st.floats(0, 1.7e9), weight=st.floats(1e-300, 1e6))
def test_integer_ids_the_api_accepts_convert_exactly_in_an_integer_typed_project(user, item, timestamp, weight,
                                                                                 folder):
    """The TypeError of issue 14 ("cannot safely cast non-equivalent float64 to int64") came from converting
    logged ids; any int64 id, as the API logs it (text), must come back as the same integer."""
    event = Event(user_id=user, item_id=item, timestamp=timestamp, weight=weight)
    frame, rejected = read_back(folder, [json.dumps(logged(event)), json.dumps(event.model_dump())], "integer")
    assert rejected == []
    converted = as_interactions(frame, project(folder, "integer"), ["uid", "sku", "ts", "stars"])
    assert converted["uid"].tolist() == [user, user] and converted["sku"].tolist() == [item, item]
    assert converted["stars"].tolist() == [weight, weight]


@SETTINGS
@given(poison=st.one_of(
    huge_ints,
    st.booleans(),
    st.floats(),  # 5.0 is not an id either
    st.builds(lambda head, c, tail: head + c + tail, st.text(max_size=5), st.sampled_from(CONTROL),
              st.text(max_size=5)),
    st.text(min_size=257, max_size=400),
    st.just(""),
), field=st.sampled_from(["user_id", "item_id"]))
def test_ids_beyond_int64_booleans_numbers_and_control_characters_are_refused(poison, field):
    event = {"user_id": "1", "item_id": "1", field: poison}
    assert accepted(_dumps(event).encode()) is None
    assert event_problem({**event, "timestamp": 1.6e9}, "string") is not None


@SETTINGS
@given(token=st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e308", "1e12", "true", '"1"',
                              "9" * (MAX_JSON_DIGITS + 1)]),
       field=st.sampled_from(["timestamp", "weight"]))
def test_non_finite_far_future_oversized_and_non_numeric_numbers_are_refused(token, field):
    body = '{"user_id": "1", "item_id": "1", "%s": %s}' % (field, token)
    assert accepted(body.encode()) is None
    try:
        problem = event_problem(parse_strict_json(body), "string")
    except ValueError:
        return
    assert problem is not None


@SETTINGS
@given(depth=st.integers(2_000, 50_000), opener=st.sampled_from(["[", "{\"a\":"]),
       where=st.sampled_from(["top", "user_id", "extra"]))
def test_deep_nesting_is_refused_with_a_documented_error(depth, opener, where):
    nested = _nested(depth, opener)
    body = nested if where == "top" else '{"user_id": "1", "item_id": "1", "%s": %s}' % (where, nested)
    with pytest.raises((ValueError, RecursionError)):
        parse_strict_json(body.encode())
    assert accepted(body.encode()) is None


@SETTINGS
@given(lines=st.lists(st.text(string.printable.replace("\n", ""), max_size=40)
                      | events.map(_dumps) | valid_events.map(json.dumps), max_size=5))
def test_every_log_line_is_read_or_quarantined_with_its_line_number_never_raised(lines, folder):
    frame, rejected = read_back(folder, lines, "integer")
    numbered = sorted([*frame["line"], *(entry["line"] for entry in rejected)])
    assert numbered == [n for n, line in enumerate(lines, start=1) if line.strip()]
    assert all(entry["reason"] for entry in rejected)
