"""A new snapshot of the interaction log becomes the project's data, or nothing changes.

``take_snapshot`` makes a snapshot file the project's interaction file (``data.interactions_path``) with the
serving event log's new events appended (``recops.data.events``), then runs the ingest and validate stages. A
snapshot that fails either puts the previous file back and re-ingests it, so the prepared tables are the previous
snapshot's again, and the error goes on to the caller: nothing is trained on bad data and nothing is lost. The
``recops-ingest-snapshot`` flow (``flows/lifecycle.py``) runs it before training; ``recops replay`` runs that flow
on weekly cuts of a log (``recops.data.snapshots``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from recops import steps
from recops.config import Settings
from recops.data.events import mark_ingested, stage_snapshot
from recops.errors import RecopsError

log = logging.getLogger(__name__)


def take_snapshot(settings: Settings, snapshot_path: str | Path, include_events: bool = True) -> dict[str, float]:
    """Make ``snapshot_path`` the project's interaction file, ingest and validate it; on any error put the
    previous file back (and re-ingest it) so nothing is lost, then raise."""
    if settings.data.source != "file" or not settings.data.interactions_path:
        raise RecopsError("ingest_snapshot needs data.source: file and data.interactions_path in params.yaml "
                          "(the file each snapshot replaces)")
    source = Path(snapshot_path).expanduser().resolve()
    if not source.is_file():
        raise RecopsError(f"snapshot {source} not found")
    target = settings.resolve(settings.data.interactions_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    if target.exists():
        backup = Path(tempfile.mkdtemp(prefix=".snapshot-backup.", dir=target.parent)) / target.name
        shutil.copy2(target, backup)
    staging = target.with_name(f".{target.name}.incoming")
    consumed, added = stage_snapshot(settings, source, staging, include_events)
    staging.replace(target)
    try:
        metrics = steps.ingest(settings)
        metrics.update(steps.validate(settings))
    except Exception:
        if backup is not None:
            shutil.copy2(backup, target)
            try:  # the prepared tables go back to the previous snapshot as well
                steps.ingest(settings)
            except RecopsError:
                pass
        else:
            target.unlink(missing_ok=True)
        raise
    finally:
        if backup is not None:
            shutil.rmtree(backup.parent, ignore_errors=True)
    mark_ingested(consumed)  # accepted: the events are in the interaction file now
    metrics["snapshot.served_events_added"] = float(added)
    log.info("snapshot %s accepted: %d rows (%d from the serving event log)", source.name,
             int(metrics.get("ingest.rows", 0)), added)
    return metrics
