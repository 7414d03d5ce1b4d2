"""What a flow run shows in the Prefect UI besides its task states: recops' own log lines, artifacts, and a final
state whose message says what happened.

- **Logs.** recops' modules log through ``logging.getLogger(__name__)`` (the ``recops.*`` loggers) and know
  nothing of Prefect. :func:`send_recops_logs` gives the ``recops`` logger Prefect's API log handler, limited to
  records emitted inside a flow or task run, so those lines land in the run's logs next to Prefect's own. Every
  flow calls it first, and so does every task that may run in another process (a Dask worker): a handler lives
  in one process, and a served deployment's run or a Dask worker is a process no recops entry point configured.
- **Artifacts**, under stable keys named after the registered model (``<model>-metrics``, ``<model>-ab-decision``,
  ``<model>-backtest``), so each key's history in the UI is the history of that model's trainings, A/B decisions
  and backtests.
- **State.** A flow that ran well but moved no champion when it could have — the A/B said hold, the first-model
  gates refused — ends in a COMPLETED state named ``Held`` whose message starts with ``held:`` and gives the
  reason, instead of a plain green ``Completed``. A failure stays a failure: only a returned decision is turned
  into a state here, never an exception.

Wiring only: the numbers and decisions come from recops (metric dicts, the A/B summary, the backtest report); this
module lays them out for Prefect.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import prefect
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler
from prefect.states import Completed, State

from recops.config import Settings

HELD = "Held"  # the state name of a run that held a promotion (type COMPLETED)
HEADLINE = ("ndcg@10", "recall@20", "coverage@10", "novelty@10")  # the metrics table's columns, when present
RECOPS_LOGGER = "recops"
# "off": the terminal drops Prefect's per-run lines; set by recops run / backtest for the processes they start
CHATTER_ENV = "RECOPS_PREFECT_CHATTER"


class RunLogHandler(APILogHandler):
    """Prefect's API log handler for records emitted in a flow or task run; a record emitted outside one
    (``recops run`` before or after its flow) stays local, where the stock handler would warn about it."""

    def emit(self, record: logging.LogRecord) -> None:
        if (getattr(record, "flow_run_id", None) is not None or FlowRunContext.get() is not None
                or TaskRunContext.get() is not None):
            super().emit(record)


def send_recops_logs() -> None:
    """Send the ``recops.*`` log lines emitted in flow and task runs of this process to the Prefect API.

    Idempotent. Adds no handler when the ``recops`` logger already has an API handler
    (``PREFECT_LOGGING_EXTRA_LOGGERS=recops`` gives it one). Where the root logger is above INFO — a deployment's
    run or a Dask worker (Prefect's logging config leaves the root at WARNING), ``recops run -q`` — and the
    ``recops`` level is not set, it becomes INFO, so the stages' lines always reach the runs' logs; how much the
    terminal shows is the terminal handlers' business (their level, :class:`PrefectChatter`). With
    :data:`CHATTER_ENV` = ``off`` this process's terminal drops Prefect's per-run lines as the command's own does.
    """
    logger = logging.getLogger(RECOPS_LOGGER)
    if logger.level == logging.NOTSET and logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    if not any(isinstance(handler, APILogHandler) for handler in logger.handlers):
        logger.addHandler(RunLogHandler())
    if os.environ.get(CHATTER_ENV) == "off":
        hide_prefect_chatter()


class PrefectChatter(logging.Filter):
    """Drops the lines Prefect's engine logs below WARNING about every flow and task run ("Beginning flow run",
    "Finished in state Completed()"). They stay in the runs' logs on the server. Everything else shows: lines the
    flows log themselves (through ``get_run_logger``), the "View at" link, retries ("Task run failed ... Retry
    1/2 will start"), a ``Held`` final state, warnings and errors."""

    LINES = ("Beginning ", "Finished in state Completed(", "Created task run ", "Executing ")

    def __init__(self) -> None:
        super().__init__()
        self.prefect_dir = str(Path(prefect.__file__).resolve().parent)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno < logging.WARNING and record.name.startswith("prefect")
                    and record.pathname.startswith(self.prefect_dir) and record.getMessage().startswith(self.LINES))


def hide_prefect_chatter() -> None:
    """Put :class:`PrefectChatter` on this process's terminal handlers (the root logger's: Prefect's loggers
    propagate to them), once."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, PrefectChatter) for f in handler.filters):
            handler.addFilter(PrefectChatter())


def terminal_for_child_processes(quiet: bool, chatter: bool) -> None:
    """What the processes a command starts (Dask workers) print through Prefect's console handler: warnings and
    errors only when ``quiet``; Prefect's per-run lines only with ``chatter`` (applied there by
    :func:`send_recops_logs`)."""
    if quiet:
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "WARNING"
    os.environ[CHATTER_ENV] = "on" if chatter else "off"


def artifact_key(settings: Settings, what: str) -> str:
    """``<registered model>-<what>`` in the form Prefect requires of artifact keys (lower case, digits, dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{settings.registry.model_name}-{what}".lower()).strip("-")
    return slug


def held(message: str, data: Any) -> State:
    """The final state of a run that held a promotion: COMPLETED, named ``Held``, message ``held: <message>``;
    calling the flow still returns ``data``."""
    return Completed(name=HELD, message=f"held: {message}", data=data)


def completed(message: str, data: Any) -> State:
    """A plain COMPLETED final state with a message saying what the run did; calling the flow returns ``data``."""
    return Completed(message=message, data=data)


# ------------------------------------------------------------------------------------------------- training
def _test_models(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    models: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if parts[0] == "test" and len(parts) == 3 and parts[1] not in ("candidates", "features"):
            models.setdefault(parts[1], {})[parts[2]] = value
    return models


def metrics_rows(metrics: dict[str, float]) -> list[dict[str, Any]]:
    """The test metrics as table rows: one per model (the two-stage list first, then the single-stage models
    best first), columns ``model``, ``users`` and the :data:`HEADLINE` metrics the run computed."""
    models = _test_models(metrics)
    columns = [name for name in HEADLINE if any(name in values for values in models.values())]
    first = columns[0] if columns else None
    order = sorted(models, key=lambda m: (m != "ranker", -models[m].get(first, float("-inf")) if first else 0, m))
    return [{"model": "two-stage" if model == "ranker" else model, "users": int(models[model].get("users", 0)),
             **{name: round(float(models[model][name]), 4) if name in models[model] else None
                for name in columns}} for model in order]


def _lift_line(rows: list[dict[str, Any]], metric: str) -> str | None:
    ranker = next((row for row in rows if row["model"] == "two-stage"), None)
    peers = [row for row in rows if row["model"] != "two-stage" and row.get(metric) is not None]
    if ranker is None or ranker.get(metric) is None or not peers:
        return None
    best = max(peers, key=lambda row: row[metric])
    lift = f" ({(ranker[metric] / best[metric] - 1) * 100:+.1f}%)" if best[metric] > 0 else ""
    return f"{metric}: two-stage {ranker[metric]:.4f} vs best single-stage {best['model']} {best[metric]:.4f}{lift}"


def publish_training(settings: Settings, metrics: dict[str, float], registry: dict[str, Any]) -> str:
    """The metrics table artifact of a training run; returns the run's state message (what was registered and
    whether it became the champion)."""
    version = registry.get("model_version", int(metrics.get("registry.model_version", 0)) or "?")
    rows = metrics_rows(metrics)
    lines = [f"Test metrics of **{settings.registry.model_name}** version {version} (split "
             f"`{settings.split.method}`, data source `{settings.data.source}`)."]
    lines += [f"- {line}" for line in (_lift_line(rows, name) for name in HEADLINE[:2]) if line]
    create_table_artifact(table=rows, key=artifact_key(settings, "metrics"), description="\n".join(lines))
    return training_outcome(version, registry)


def training_outcome(version: Any, registry: dict[str, Any]) -> str:
    champion, note = registry.get("champion"), registry.get("champion_note", "")
    if champion is not None and str(champion) == str(version):
        return f"version {version} registered: the first champion ({note})"
    if champion is not None:
        return f"version {version} registered as challenger; champion stays version {champion}"
    return f"version {version} registered as challenger, not promoted: {note}"


def first_model_held(settings: Settings, registry: dict[str, Any]) -> bool:
    """Training tried to make its version the first champion (``registry.bootstrap_champion``, no champion yet)
    and the gates refused it."""
    return settings.registry.bootstrap_champion and registry.get("champion") is None


# ------------------------------------------------------------------------------------------------ A/B test
def publish_decision(settings: Settings, report: dict[str, Any] | None, promotion: dict[str, Any] | None,
                     refused: str | None = None) -> None:
    """The markdown artifact of an evaluate-and-promote run: the A/B decision with its reasons and numbers, or
    the first-model gates' verdict (``refused``: their message) when there was no champion."""
    name = settings.registry.model_name
    if report is None:  # no champion: the first-model gates decided
        if refused is not None:
            text = f"# {name}: first model held\n\nThe first-model quality gates refused the challenger: {refused}\n"
        else:
            text = (f"# {name}: first model promoted\n\nVersion {promotion['to_version']} is the first champion: "
                    f"{promotion.get('reason', '')}\n")
    elif report["decision"] not in ("ship", "hold"):  # the challenger already is the champion
        text = (f"# {name}: nothing to evaluate\n\nThe challenger is the champion (version "
                f"{report['challenger_version']}): train a new version to challenge it.\n")
    else:
        text = ab_markdown(report, promotion)
    create_markdown_artifact(markdown=text, key=artifact_key(settings, "ab-decision"),
                             description=f"A/B decision of {name}")


def _number(value: Any, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def ab_markdown(report: dict[str, Any], promotion: dict[str, Any] | None) -> str:
    decision = report["decision"]
    metric = report.get("primary_metric", "")
    level = f"{1 - report['alpha']:.0%}" if report.get("alpha") is not None else "CI"
    moved = (f"champion -> version {promotion['to_version']}" if promotion
             else f"champion stays version {report['champion_version']}")
    lines = [
        f"# {report.get('model_name', '')} A/B: **{decision.upper()}** ({moved})", "",
        f"Challenger version {report['challenger_version']} vs champion version {report['champion_version']} on "
        f"{report.get('n_users', '?')} users ({report.get('created', '')}).", "",
        "| | champion | challenger | delta | " + f"{level} interval | p-value |",
        "|---|---:|---:|---:|---|---:|",
        f"| {metric} | {_number(report.get('mean_a'))} | {_number(report.get('mean_b'))} | "
        f"{_number(report.get('delta'), '+.4f')} | {_number(report.get('ci_low'), '+.4f')} to "
        f"{_number(report.get('ci_high'), '+.4f')} | {_number(report.get('p_value'), '.3g')} |", "",
        "## Reasons", "", *[f"- {reason}" for reason in report.get("reasons", [])],
    ]
    guards = report.get("guardrails") or []
    if guards:
        lines += ["", "## Guardrails", "", "| guardrail | champion | challenger | limit | status |",
                  "|---|---:|---:|---:|---|"]
        lines += [f"| {g['name']} | {_number(g.get('champion'))} | {_number(g.get('challenger'))} | "
                  f"{_number(g.get('limit'))} | {g['status']} |" for g in guards]
    diff = report.get("param_diff") or []
    if diff:
        lines += ["", "## What changed between the versions", "", "| parameter | champion | challenger |",
                  "|---|---|---|"]
        lines += [f"| `{d['key']}` | {d.get('champion')} | {d.get('challenger')} |" for d in diff]
    return "\n".join(lines) + "\n"


def hold_reason(report: dict[str, Any]) -> str:
    """The first reason against shipping, as the state message gives it."""
    against = [r.split(":", 1)[1].strip() for r in report.get("reasons", []) if r.startswith("against:")]
    return (f"challenger {report['challenger_version']} vs champion {report['champion_version']}: "
            + (against[0] if against else "the A/B test did not show a significant gain"))


# ------------------------------------------------------------------------------------------------- backtest
def publish_backtest(settings: Settings, report: dict[str, Any]) -> None:
    """The markdown artifact of a backtest: pooled metrics per model and recops' lift over every peer with its
    paired bootstrap interval."""
    create_markdown_artifact(markdown=backtest_markdown(settings, report), key=artifact_key(settings, "backtest"),
                             description=f"rolling-origin backtest of {settings.registry.model_name}'s configuration")


def backtest_outcome(report: dict[str, Any]) -> str:
    """The run's state message: recops against the best peer on each lift metric, pooled over the windows."""
    return "; ".join(f"pooled {metric}: recops {lift['recops_value']:.4f} vs best peer {lift['best_peer']} "
                     f"{lift['best_peer_value']:.4f} ({lift['lift_over_best_pct']:+.1f}%)"
                     for metric, lift in report["lift"].items())


def backtest_markdown(settings: Settings, report: dict[str, Any]) -> str:
    cfg, pooled = report["config"], report["pooled"]["metrics"]
    names = list(next(iter(pooled.values()), {}))
    level = f"{100 * cfg['confidence']:.0f}%"
    lines = [f"# Backtest of {settings.registry.model_name}'s configuration", "",
             f"{len(report['windows'])} windows of {cfg['test_days']:g} days on the global timeline, pooled over "
             f"{report['pooled']['rows']} (window, warm user) rows ({report.get('created', '')}, "
             f"{report.get('seconds', 0):.0f} s).", "",
             "| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {model} | " + " | ".join(_number(values.get(n)) for n in names) + " |"
              for model, values in pooled.items()]
    lines += ["", f"## recops' lift over each peer ({level} paired bootstrap interval)", "",
              "| metric | peer | lift | interval |", "|---|---|---:|---|"]
    for metric, lift in report["lift"].items():
        for peer, over in lift["over"].items():
            best = " (best peer)" if peer == lift["best_peer"] else ""
            lines.append(f"| {metric} | {peer}{best} | {over['lift_pct']:+.1f}% | {over['low_pct']:+.1f}% to "
                         f"{over['high_pct']:+.1f}% |")
    return "\n".join(lines) + "\n"
