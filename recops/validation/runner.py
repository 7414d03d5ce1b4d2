"""Validating the prepared tables with Great Expectations and reporting what to fix.

``validate_tables`` runs the suites of ``paths.expectations_dir`` (one JSON file per table) over the prepared
interactions and the optional user and item tables, writes the full results (``validation.json``) and a Data
Docs site (``data_docs/index.html``) to the report folder, and raises ``DataValidationError`` listing every
failed expectation in plain words when the data breaks any of them. Values that come from params (rating
range, earliest timestamp, minimum counts) reach the suites as suite parameters.

Great Expectations is imported only when a validation runs (the import alone takes seconds); this module never
reads or writes files other than the suites and the report folder it is given.

Coverage (every interaction's user and item appear in the attribute tables) is a foreign-key check, done as a
left join: the interactions batch gets a column holding each row's id where the attribute table has that id and
nothing otherwise, and the suite expects it to equal the id. Passing the attribute table's ids as a suite
parameter to ``expect_column_values_to_be_in_set`` would read more directly, but GX 1.24 serialises that list
dozens of times per expectation (about 14 s per 100k ids, whatever the number of rows) and copies it into every
result and Data Docs page.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from recops.columns import SPLIT_VALUES, Columns
from recops.config import Settings
from recops.errors import DataValidationError, RecopsError
from recops.validation.report import describe_failure, failed_results, failure_message, summary_metrics
from recops.validation.privacy import identifier_named_columns, privacy_expectations
from recops.validation.suites import SkippedExpectation, applicable_expectations, load_suite
from recops.web_assets import FETCH_HINT, localise_site

log = logging.getLogger(__name__)

REPORT_FILE = "validation.json"
DATA_DOCS_DIR = "data_docs"

# Attribute table -> (its id column in the interactions, the lookup column the interactions suite compares to it).
FOREIGN_KEYS = {
    "users": (Columns.USER_ID, "user_id_in_users_table"),
    "items": (Columns.ITEM_ID, "item_id_in_items_table"),
}
_DOCS_SITE = "recops"
# GX's navbar shows its logo from here (with a per-page query string); the site's static/images has the same file
_GX_IMAGES = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
_DATASOURCE = "recops"


def validate_tables(
    interactions: pd.DataFrame,
    users: pd.DataFrame | None,
    items: pd.DataFrame | None,
    settings: Settings,
    sources: dict[str, str],
    report_dir: Path,
) -> dict[str, float]:
    """Check the prepared tables against their suites; return flat summary metrics or raise DataValidationError.

    ``sources`` maps a table name ("interactions", "users", "items") to the file the user gave, for messages.
    ``validation.json`` and ``data_docs/`` are written to ``report_dir`` whether or not the data passes.
    """
    frames = {
        name: frame
        for name, frame in (("interactions", interactions), ("users", users), ("items", items))
        if frame is not None
    }
    suites_dir = settings.path("expectations_dir")
    suites = {name: load_suite(suites_dir / f"{name}.json") for name in frames}
    batches = dict(frames, interactions=with_foreign_key_lookups(interactions, frames))
    evaluated: dict[str, list[dict[str, Any]]] = {}
    not_evaluated: dict[str, list[SkippedExpectation]] = {}
    for name in frames:
        evaluated[name], not_evaluated[name] = applicable_expectations(
            suites[name], batches[name], settings, given_tables=set(frames)
        )
    if "users" in frames:  # data minimisation: no direct identifiers among the user attributes
        named = identifier_named_columns(settings)
        if named:
            raise DataValidationError(
                f"data validation failed: user attribute column(s) {', '.join(map(repr, named))} of "
                f"{sources.get('users') or 'the users table'} are named like direct identifiers (e-mail, phone, IP "
                "address, name): remove them from data.user_attributes (recops needs no identifiers), or list them "
                "in privacy.allow_identifier_columns if they must stay")
        evaluated["users"] = evaluated["users"] + privacy_expectations(batches["users"], settings)
    parameters = suite_parameters(settings)

    report_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = report_dir / DATA_DOCS_DIR
    # Pages of an earlier run would stay behind, linked from nowhere; the site shows this run only.
    shutil.rmtree(docs_dir, ignore_errors=True)

    started = time.perf_counter()
    run = _GreatExpectationsRun(docs_dir, partial_unexpected_count=max(20, 2 * settings.validation.offending_examples))
    validations = {
        name: run.validate(name, suites[name], evaluated[name], batches[name], parameters, suites_dir / f"{name}.json")
        for name in frames
    }
    log.info("validated %s in %.1f s", ", ".join(frames), time.perf_counter() - started)

    report_path = report_dir / REPORT_FILE
    _write_report(report_path, validations, not_evaluated, parameters, sources)
    run.build_data_docs()

    lines = [
        describe_failure(result, name, frames, sources, settings.validation.offending_examples)
        for name, validation in validations.items()
        for result in failed_results(validation)
    ]
    metrics = summary_metrics(validations, frames)
    if lines:
        message = failure_message(
            lines, _shown_path(report_path, settings), _shown_path(docs_dir / "index.html", settings)
        )
        raise DataValidationError(message)
    log.info("data validation passed: %d expectations met", int(metrics["validation.evaluated_expectations"]))
    return metrics


def suite_parameters(settings: Settings) -> dict[str, Any]:
    """Values the suites refer to as ``{"$PARAMETER": name}``."""
    checks = settings.validation
    return {
        "min_rows": checks.min_rows,
        "min_users": checks.min_users,
        "min_items": checks.min_items,
        "rating_min": checks.rating_min,
        "rating_max": checks.rating_max,
        "earliest_timestamp": checks.earliest_epoch_seconds(),
        "now": int(time.time()),
        "split_values": list(SPLIT_VALUES),
    }


def with_foreign_key_lookups(interactions: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The interactions plus, per given attribute table, each row's id where that table has it (else empty)."""
    lookups: dict[str, pd.Series] = {}
    for table, (id_column, lookup_column) in FOREIGN_KEYS.items():
        attributes = frames.get(table)
        if attributes is None or id_column not in interactions.columns or id_column not in attributes.columns:
            continue
        ids = interactions[id_column]
        lookups[lookup_column] = ids.where(ids.isin(attributes[id_column]))
    # Under copy-on-write (pandas >= 3) this is a shallow copy: the interaction columns are not duplicated.
    return interactions.assign(**lookups) if lookups else interactions


def _shown_path(path: Path, settings: Settings) -> str:
    try:
        return str(path.resolve().relative_to(settings.root.resolve()))
    except ValueError:
        return str(path)


def _write_report(
    path: Path,
    validations: dict[str, dict[str, Any]],
    skipped: dict[str, list[SkippedExpectation]],
    parameters: dict[str, Any],
    sources: dict[str, str],
) -> None:
    report = {
        "success": all(validation.get("success") for validation in validations.values()),
        "suite_parameters": parameters,
        "tables": {
            name: {
                "source": sources.get(name),
                "not_evaluated": [asdict(item) for item in skipped[name]],
                "result": validation,
            }
            for name, validation in validations.items()
        },
    }
    path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")


class _GreatExpectationsRun:
    """One ephemeral GX context: validates DataFrames against suites and renders the results as Data Docs.

    The context lives in memory; only the Data Docs site is written, to ``docs_dir``. Ephemeral contexts come
    with a default site in a temporary folder, which is replaced here by the report folder's.
    """

    def __init__(self, docs_dir: Path, partial_unexpected_count: int) -> None:
        os.environ["GX_ANALYTICS_ENABLED"] = "false"
        import great_expectations as gx
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self._gx = gx
        self._docs_dir = docs_dir
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            data_docs_sites={
                _DOCS_SITE: {
                    "class_name": "SiteBuilder",
                    "show_how_to_buttons": False,
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(docs_dir.resolve()),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                }
            },
            progress_bars=ProgressBarsConfig(globally=False),
            analytics_enabled=False,
        )
        self._context = gx.get_context(project_config=config, mode="ephemeral")
        # One run id for all tables, so that Data Docs lists them as one run.
        self._run_id = RunIdentifier(run_name="recops-validate", run_time=datetime.now(timezone.utc))
        self._datasource = self._context.data_sources.add_pandas(_DATASOURCE)
        # SUMMARY adds the index of the first failing rows (partial_unexpected_index_list) to BASIC's counts and
        # examples: the report turns it into the file's row numbers of the offending values.
        self._result_format = {"result_format": "SUMMARY", "partial_unexpected_count": partial_unexpected_count}

    def validate(
        self,
        table: str,
        suite: dict[str, Any],
        expectations: list[dict[str, Any]],
        frame: pd.DataFrame,
        parameters: dict[str, Any],
        suite_path: Path,
    ) -> dict[str, Any]:
        """Results of ``expectations`` (from ``suite``) on ``frame``, as GX's JSON dict."""
        gx = self._gx
        gx_suite = self._context.suites.add(
            gx.ExpectationSuite(
                name=str(suite.get("name") or table),
                expectations=[self._expectation(spec, suite_path) for spec in expectations],
                meta=suite.get("meta") or None,
                notes=suite.get("notes"),
            )
        )
        batch = self._datasource.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        definition = self._context.validation_definitions.add(
            gx.ValidationDefinition(name=table, data=batch, suite=gx_suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=parameters,
            result_format=self._result_format,
            run_id=self._run_id,
        )
        validation = result.to_json_dict()
        # GX returns results grouped by how it computed them; the suite's order reads better (row count first).
        position = {expectation.id: index for index, expectation in enumerate(gx_suite.expectations)}
        validation["results"].sort(key=lambda item: position.get(item["expectation_config"].get("id"), len(position)))
        return validation

    def build_data_docs(self) -> None:
        self._context.build_data_docs(site_names=[_DOCS_SITE])
        # GX links jQuery, Bootstrap, bootstrap-table and Font Awesome from CDNs and draws the index tables with
        # them: offline the site is blank. Point the pages at the copies make install fetched (recops.web_assets).
        site = localise_site(self._docs_dir, mirrored={_GX_IMAGES: self._docs_dir / "static" / "images"})
        if site.left_remote:
            log.warning("Data Docs still load %d files from the internet (%s): without a network their tables stay "
                        "empty; %s", len(site.left_remote), ", ".join(site.left_remote), FETCH_HINT)

    def _expectation(self, spec: dict[str, Any], suite_path: Path) -> Any:
        """A GX Expectation from its JSON form; a bad one fails loudly (GX's suite would only log and drop it)."""
        from great_expectations.exceptions import GreatExpectationsError
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        try:
            return ExpectationConfiguration(
                type=spec["type"],
                kwargs=spec.get("kwargs") or {},
                meta=spec.get("meta") or None,
                notes=spec.get("notes"),
                description=spec.get("description"),
            ).to_domain_obj()
        except (GreatExpectationsError, ValueError) as exc:
            raise RecopsError(f"{suite_path}: invalid expectation {spec['type']} {spec.get('kwargs')}: {exc}") from None
