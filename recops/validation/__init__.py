"""Checking the prepared tables with Great Expectations before anything is trained on them.

``validate_tables`` runs the suites in ``expectations/`` (interactions, users, items), writes the full results
and a Data Docs site to the report folder, and raises ``DataValidationError`` with one readable line per failed
expectation. Great Expectations is used only inside this package and imported only when a validation runs.
"""

from recops.validation.runner import validate_tables

__all__ = ["validate_tables"]
