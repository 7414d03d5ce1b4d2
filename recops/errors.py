"""The one exception type for problems a user can cause and fix (bad data, bad params, missing inputs).

The CLI, the DVC stage entry points and the Prefect flow turn it into a clear message and a non-zero exit,
without a traceback. Anything else that escapes is a bug in recops and keeps its traceback.
"""


class RecopsError(Exception):
    """A problem the user can fix; the message must say what to fix."""


class DataValidationError(RecopsError):
    """Input data broke one or more expectations; the message lists them."""
