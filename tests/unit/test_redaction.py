"""URI passwords are masked wherever recops shows a URI: logs, MLflow params, errors."""

import logging

from recops.config import Settings
from recops.redaction import RedactingFilter, redact, redacted

SECRET = "s3cr3t-pa55"


def test_uri_passwords_are_masked_and_everything_else_kept():
    assert redact(f"postgresql+psycopg://recops:{SECRET}@db:5432/mlflow") == \
        "postgresql+psycopg://recops:***@db:5432/mlflow"
    assert redact(f"redis://:{SECRET}@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact(f"tried http://u:{SECRET}@h/ and https://h2/x") == "tried http://u:***@h/ and https://h2/x"
    assert redact("sqlite:////work/mlflow.db") == "sqlite:////work/mlflow.db"
    assert redact("no uri: a:b@c") == "no uri: a:b@c"
    assert redacted({"a": [f"redis://:{SECRET}@h"], "b": 3}) == {"a": ["redis://:***@h"], "b": 3}


def test_tracking_params_never_hold_a_password():
    settings = Settings.model_validate({"registry": {"tracking_uri": f"postgresql+psycopg://u:{SECRET}@db/x"},
                                        "serving": {"cache": {"redis_url": f"redis://:{SECRET}@cache:6379/0"}}})
    flat = settings.flat()
    assert not any(SECRET in str(value) for value in flat.values())
    assert flat["registry.tracking_uri"] == "postgresql+psycopg://u:***@db/x"
    assert settings.tracking_uri() == f"postgresql+psycopg://u:{SECRET}@db/x"  # what connects is unchanged


def test_log_records_are_masked_arguments_and_tracebacks_included():
    record = logging.LogRecord("recops", logging.ERROR, __file__, 1, "could not reach %s", (
        f"http://admin:{SECRET}@registry:5000",), None)
    assert RedactingFilter().filter(record)
    assert SECRET not in record.getMessage() and "admin:***@registry" in record.getMessage()
    try:
        raise ConnectionError(f"postgresql://u:{SECRET}@db refused")
    except ConnectionError:
        import sys

        failed = logging.LogRecord("recops", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    RedactingFilter().filter(failed)
    assert SECRET not in logging.Formatter().format(failed)
