"""What flow runs left on a Prefect server — their final state, logs and artifacts — read back through Prefect's
own client, as the UI reads them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def prefect_client(api_url: str) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def flow_runs(api_url: str, flow_name: str, params_path: Path) -> list[Any]:
    """The runs of ``flow_name`` with this params.yaml (the server may hold other projects' runs), oldest first."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with prefect_client(api_url) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200)
    wanted = Path(params_path).resolve()
    return [run for run in runs if Path(str(run.parameters.get("params_path", ""))).resolve() == wanted]


def run_logs(api_url: str, run: Any) -> list[Any]:
    """Every log line of the flow run (its own and its task runs'), in time order."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs: list[Any] = []
    with prefect_client(api_url) as client:
        while True:
            page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200,
                                    offset=len(logs))
            logs += page
            if len(page) < 200:
                return logs


def run_artifacts(api_url: str, run: Any) -> dict[str, Any]:
    """The flow run's artifacts that have a key, by key."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with prefect_client(api_url) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    return {artifact.key: artifact for artifact in found if artifact.key}


def table_rows(artifact: Any) -> list[dict[str, Any]]:
    """A table artifact's rows (the server keeps the table as JSON text)."""
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data
