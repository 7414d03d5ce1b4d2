"""Expectations that refuse direct identifiers among the user attributes (data minimisation, issue 16).

Generated from params for the declared user attribute columns (not kept in ``expectations/users.json``, whose
columns depend on the data): values that are e-mail addresses, phone numbers in international or North American
form, or IPv4 / IPv6 addresses; and a text column whose distinct values cover more than
``privacy.max_attribute_unique_share`` of the users (a name, an address or any free text singles people out as
surely as an e-mail). A column named like an identifier (``email``, ``phone``, ``ip_address``, ``name``, ...)
is refused before Great Expectations runs. ``privacy.allow_identifier_columns`` lists columns that are allowed
all the same. The failures name rows, never the values.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from recops.columns import Columns
from recops.config import Settings

PATTERNS = {
    "e-mail addresses": r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$",
    "phone numbers": r"^(?:\+[0-9][0-9 ().-]{7,}[0-9]|\(?[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4})$",
    "IPv4 addresses": r"^(?:(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])$",
    "IPv6 addresses": r"^(?=.*:.*:)[0-9A-Fa-f:]{2,39}$",
}
IDENTIFIER_NAME = re.compile(
    r"(?:^|[_\W])(?:e?-?mail|email_?address|phone|phone_?number|mobile|tel|telephone|ip|ip_?address|ipv[46]|"
    r"name|first_?name|last_?name|full_?name|surname|user_?name|address|street|ssn|passport|iban|credit_?card)"
    r"(?:$|[_\W])", re.IGNORECASE)


def _meta(kind: str) -> dict[str, Any]:
    return {"recops": {"generated": "privacy", "check": kind}}


def identifier_named_columns(settings: Settings) -> list[str]:
    """Declared user attribute columns named like direct identifiers and not allowed in params."""
    spec = settings.data.user_attributes
    if spec is None:
        return []
    declared = [*spec.numeric, *spec.categorical, *spec.multi_label, *([spec.title] if spec.title else [])]
    allowed = set(settings.privacy.allow_identifier_columns)
    return [c for c in declared if c not in allowed and IDENTIFIER_NAME.search(c)]


def privacy_expectations(users: pd.DataFrame, settings: Settings) -> list[dict[str, Any]]:
    """The generated expectations for the users table (GX 1.x expectation dicts, like a suite's)."""
    allowed = set(settings.privacy.allow_identifier_columns)
    columns = [c for c in users.columns if c != Columns.USER_ID and c not in allowed]
    share = settings.privacy.max_attribute_unique_share
    out: list[dict[str, Any]] = []
    for column in columns:
        values = users[column]
        if not (pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype)):
            continue  # numbers: age, income bands... (a table of a few users would fail any share on them)
        out.append({
            "type": "expect_column_values_to_not_match_regex_list",
            "kwargs": {"column": column, "regex_list": list(PATTERNS.values())},
            "description": f"user attributes must not hold {', '.join(PATTERNS)} (direct identifiers; allow "
                           "the column in privacy.allow_identifier_columns if it must stay)",
            "meta": _meta("identifier values"),
        })
        out.append({
            "type": "expect_column_proportion_of_unique_values_to_be_between",
            "kwargs": {"column": column, "max_value": share},
            "description": f"a user attribute may have distinct values for at most {share:.0%} of the users "
                           "(more singles people out, as a name or free text does; privacy."
                           "max_attribute_unique_share, or allow the column in privacy.allow_identifier_columns)",
            "meta": _meta("unique share"),
        })
    return out
