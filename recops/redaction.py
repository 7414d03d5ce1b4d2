"""Credentials never leave the process: ``scheme://user:password@host`` becomes ``scheme://user:***@host``.

Tracking, database and cache URIs may carry a password (``postgresql+psycopg://recops:s3cret@db/mlflow``,
``redis://:s3cret@cache:6379/0``). Everything recops writes where others read it goes through here: log records
(a filter the entry points install on the root handlers), MLflow params and the logged ``settings.json``, the
serving API's ``/ready`` and error details. The value used to connect is never changed, only what is shown.
"""

from __future__ import annotations

import logging
import re
from typing import Any

# scheme://[user]:password@ -- the password is anything up to the last '@' before the host part
_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s'\"]*):(?P<password>[^/\s'\"]+)@")
MASK = "***"


def redact(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``."""
    if "://" not in text:
        return text
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def redacted(value: Any) -> Any:
    """``value`` (str, or dicts / lists of them, nested) with every URI password masked."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redacted(item) for item in value)
    return value


class RedactingFilter(logging.Filter):
    """Formats each record's message once, masked (arguments included), so no handler ever sees a password."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler's own error reporting
            return True
        masked = redact(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of ``logger`` (the root logger by default), once."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
