"""The markdown MLflow shows for recops' registered model, its versions and their training runs.

Pure functions: they build text from plain dicts (history entries, metrics, params, A/B summaries) and know
nothing of MLflow's client. The registry modules write what they return: the registered model's description (what
the model is, how its aliases move, the promotion history as a table), each version's description (its run, data,
headline metrics, what changed since the version before, then the A/B decision and the promotion once made) and
the training run's description (MLflow's ``mlflow.note.content`` tag).

A description is a list of ``### `` sections; recops rewrites only the sections it owns
(:func:`replace_section`), so text a user adds in the UI under a heading of their own stays. MLflow keeps at most
5000 characters of a description in its SQL stores: tables are cut to their newest rows to fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

MAX_DESCRIPTION = 5000  # SqlRegisteredModel / SqlModelVersion.description is VARCHAR(5000)

ALIASES_HEADING = "### How the aliases move"
HISTORY_HEADING = "### Promotion history"
AB_HEADING = "### A/B decision"
PROMOTION_HEADING = "### Promotion"

# recops metric key -> how a person names it
HEADLINE_LABELS = {
    "test.ranker.ndcg@10": "NDCG@10 (test)",
    "test.ranker.recall@20": "Recall@20 (test)",
    "test.ranker.coverage@10": "coverage@10 (test)",
    "test.ranker.novelty@10": "novelty@10 (test)",
    "timeline.ranker.ndcg@10": "NDCG@10 (rolling timeline)",
}
_MAX_HISTORY_ROWS = 25
_MAX_DIFF_ROWS = 15
_MAX_CELL = 120


def replace_section(text: str | None, heading: str, body: str) -> str:
    """``text`` with the section under ``heading`` (up to the next ``### `` heading) replaced by ``body``; the
    section is appended when ``text`` has none. Other sections are kept as they are."""
    lines = (text or "").rstrip("\n").split("\n") if text else []
    section = [heading, "", *body.strip("\n").split("\n")]
    try:
        start = lines.index(heading)
    except ValueError:
        return "\n".join([*lines, *([""] if lines else []), *section]).strip("\n") + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("### ")), len(lines))
    tail = lines[end:]
    return "\n".join([*lines[:start], *section, *([""] if tail else []), *tail]).strip("\n") + "\n"


def fit(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """``text`` cut to ``limit`` characters, saying so."""
    if len(text) <= limit:
        return text
    note = "\n\n… (cut to fit MLflow's description limit)\n"
    return text[: limit - len(note)] + note


def registered_model_intro(model_name: str) -> str:
    return (
        f"**{model_name}** is the recommender recops trains: candidate sources (matrix "
        "factorisation, popularity, item-kNN, EASE, ...) proposing items per user, re-ranked by a LightGBM "
        "LambdaRank model exported to ONNX. Each version is one `recops run`: its training run holds the "
        "configuration (params and `config/settings.json`), the metrics, the datasets it was trained on (with the "
        "md5 DVC records for them), the ONNX ranker and the serving bundle `recops serve` loads.\n"
    )


def aliases_section() -> str:
    return (
        "- `challenger`: the newest trained version; `recops run` points it at the version it registers.\n"
        "- `champion`: the version `recops serve` serves and `recops ab` compares against. It moves **only** "
        "through `recops promote` (on a `ship` decision of `recops ab` for exactly this champion and challenger, "
        "or, for the first model, on the first-model quality gates) and `recops rollback` (back to the champion "
        "before). Each move is recorded below and on the version.\n"
        "- Please do not move `champion` with the registry's alias buttons: that skips the A/B gate and leaves "
        "no record. recops notices: `recops models` marks such a champion \"moved outside recops\", the "
        "`/ready` answer of `recops serve` carries a warning, and `recops rollback` refuses until the alias is "
        "set back (or a version is promoted).\n"
    )


def history_table(history: Sequence[Mapping[str, Any]]) -> str:
    """The promotion history as a markdown table, newest first (the newest rows when it is long)."""
    if not history:
        return "No promotion yet: the first version that passes the quality gates becomes the champion.\n"
    rows = ["| when (UTC) | action | champion | by | reason |", "|---|---|---|---|---|"]
    for entry in list(reversed(history))[:_MAX_HISTORY_ROWS]:
        move = f"{entry.get('from_version') or '—'} → {entry.get('to_version')}"
        rows.append(f"| {_when(entry.get('at'))} | {entry.get('action', '')} | {move} | "
                    f"{_cell(entry.get('by'))} | {_cell(entry.get('reason'))} |")
    older = len(history) - _MAX_HISTORY_ROWS
    if older > 0:
        rows.append(f"\n{older} older entries: `recops models --json` or the `recops.promotion_history*` tags.")
    return "\n".join(rows) + "\n"


def registered_model_description(model_name: str, history: Sequence[Mapping[str, Any]],
                                 current: str | None = None) -> str:
    """The registered model's description: ``current`` (a user's edits kept) with recops' sections rewritten."""
    text = current if current and current.strip() else registered_model_intro(model_name)
    text = replace_section(text, ALIASES_HEADING, aliases_section())
    text = replace_section(text, HISTORY_HEADING, history_table(history))
    return fit(text)


def version_description(*, version: str, run_name: str, lineage: Mapping[str, str], metrics: Mapping[str, float],
                        seconds: float | None, previous: Mapping[str, Any] | None,
                        params: Mapping[str, str]) -> str:
    """What a new version is: its run, its data and code, its headline metrics (with the change since the
    previous version) and the parameters that changed. ``previous``: ``{"version", "params", "metrics",
    "lineage"}`` of the version registered before it, or None for the first."""
    took = f" (pipeline {_duration(seconds)})" if seconds is not None else ""
    source = lineage.get("data_source", "?")
    lines = [
        f"Version {version}, trained by `recops run` in run `{run_name}`{took}.",
        "",
        f"- data: **{source}**, interactions md5 `{lineage.get('data_md5.interactions', '?')[:12]}`",
        f"- code: git `{_commit(lineage.get('git_commit', '?'))}`, params hash `{lineage.get('params_hash', '?')[:12]}`",
        "",
        "| headline metric | this version |" + (f" version {previous['version']} |" if previous else ""),
        "|---|---|" + ("---|" if previous else ""),
    ]
    before = (previous or {}).get("metrics", {})
    for key, label in HEADLINE_LABELS.items():
        value = _lookup(metrics, key)
        if value is None:
            continue
        row = f"| {label} | {value:.4f} |"
        if previous:
            old = _lookup(before, key)
            row += f" {old:.4f} ({value - old:+.4f}) |" if old is not None else " — |"
        lines.append(row)
    text = "\n".join(lines) + "\n"
    text = replace_section(text, "### What changed", changes(previous, params, lineage))
    return fit(replace_section(text, AB_HEADING, "Not tested yet: `recops ab` compares it with the champion.\n"))


def changes(previous: Mapping[str, Any] | None, params: Mapping[str, str], lineage: Mapping[str, str]) -> str:
    """What differs from the previous version: params (a table), data and code."""
    if previous is None:
        return "The first version of this model.\n"
    name = f"version {previous['version']}"
    old_params: Mapping[str, str] = previous.get("params") or {}
    old_lineage: Mapping[str, str] = previous.get("lineage") or {}
    out: list[str] = []
    differing = sorted(key for key in set(params) | set(old_params)
                       if params.get(key) != old_params.get(key) and not key.startswith("paths."))
    if not old_params:
        out.append(f"- params: {name}'s run is not available to compare with.")
    elif not differing:
        out.append(f"- params: the same as {name}.")
    else:
        out.append(f"- params: {len(differing)} changed since {name}:")
        out.append("")
        out.append(f"| param | {name} | this version |")
        out.append("|---|---|---|")
        for key in differing[:_MAX_DIFF_ROWS]:
            out.append(f"| `{key}` | {_cell(old_params.get(key, '—'))} | {_cell(params.get(key, '—'))} |")
        if len(differing) > _MAX_DIFF_ROWS:
            out.append(f"\n… and {len(differing) - _MAX_DIFF_ROWS} more (compare the two runs in MLflow).")
        out.append("")
    for key, what in (("data_md5.interactions", "interactions"), ("git_commit", "git commit")):
        new, old = lineage.get(key), old_lineage.get(key)
        if new and old:
            out.append(f"- {what}: " + ("unchanged." if new == old else f"`{_commit(old)}` → `{_commit(new)}`."))
    return "\n".join(out) + "\n"


def ab_section(summary: Mapping[str, Any]) -> str:
    """An A/B decision in two lines: the decision, the numbers, the reasons."""
    decision = str(summary.get("decision", "?")).upper()
    metric = summary.get("primary_metric", "the primary metric")
    parts = [f"**{decision}** against champion version {summary.get('champion_version')} "
             f"({_when(summary.get('created')) or 'now'} UTC)."]
    numbers = []
    if _finite(summary.get("delta")):
        interval = (f" [{summary['ci_low']:+.4f}, {summary['ci_high']:+.4f}]"
                    if _finite(summary.get("ci_low")) and _finite(summary.get("ci_high")) else "")
        numbers.append(f"{metric} delta {summary['delta']:+.4f}{interval}")
    if _finite(summary.get("lift")):
        numbers.append(f"lift {summary['lift']:+.1%}")
    if _finite(summary.get("p_value")):
        numbers.append(f"p = {summary['p_value']:.3g}")
    if numbers:
        parts.append(", ".join(numbers) + ".")
    reasons = summary.get("reasons") or []
    if isinstance(reasons, str):
        reasons = [reasons]
    lines = [" ".join(parts), ""]
    lines += [f"- {_cell(r, 300)}" for r in list(reasons)[:8]]
    lines.append("")
    lines.append("The report is the run's `ab/ab.html` artifact.")
    return "\n".join(lines) + "\n"


def promotion_section(entries: Iterable[Mapping[str, Any]], version: str) -> str:
    """What promote / rollback did to ``version``, newest first."""
    rows = []
    for entry in reversed(list(entries)):
        if str(entry.get("to_version")) == version:
            verb = "promoted to champion" if entry.get("action") == "promote" else "made champion again by a rollback"
        elif str(entry.get("from_version")) == version:
            verb = "rolled back (no longer champion)" if entry.get("action") == "rollback" else "replaced as champion"
        else:
            continue
        rows.append(f"- {_when(entry.get('at'))} UTC: {verb} by {_cell(entry.get('by'))}: {_cell(entry.get('reason'))}")
    return ("\n".join(rows) if rows else "Never champion.") + "\n"


def run_description(*, model_name: str, version: str, lineage: Mapping[str, str], metrics: Mapping[str, float],
                    stage_seconds: Mapping[str, float], total_seconds: float | None,
                    datasets: Sequence[Mapping[str, Any]]) -> str:
    """The training run's note: what it registered, the headline numbers, where the time went, what it read."""
    lines = [f"`recops run` training of **{model_name}** version {version}.", ""]
    headline = [(label, value) for key, label in HEADLINE_LABELS.items()
                if (value := _lookup(metrics, key)) is not None]
    if headline:
        lines += ["| headline metric | value |", "|---|---|", *[f"| {k} | {v:.4f} |" for k, v in headline], ""]
    if stage_seconds:
        lines += ["| stage | seconds |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in stage_seconds.items()]]
        if total_seconds is not None:
            lines.append(f"| **pipeline** (first stage start → registration) | {total_seconds:.1f} |")
        lines.append("")
    if datasets:
        lines += ["| dataset | context | rows | md5 (as DVC records it) |", "|---|---|---|---|"]
        lines += [f"| {d['name']} | {d['context']} | {d.get('rows', '')} | `{d['digest']}` |" for d in datasets]
        lines.append("")
    lines.append(f"Data source `{lineage.get('data_source', '?')}`, git `{lineage.get('git_commit', '?')}`.")
    return fit("\n".join(lines) + "\n")


def _commit(value: str) -> str:
    """A git commit (or md5) cut to 12 characters, keeping the ``-dirty`` mark of uncommitted changes."""
    dirty = value.endswith("-dirty")
    return value.removesuffix("-dirty")[:12] + ("-dirty" if dirty else "")


def _lookup(metrics: Mapping[str, Any], key: str) -> float | None:
    for candidate in (key, key.replace("@", "_at_")):
        value = metrics.get(candidate)
        if _finite(value):
            return float(value)
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _when(stamp: Any) -> str:
    if not stamp:
        return ""
    try:
        moment = datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp)[:16]
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M")


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _cell(value: Any, limit: int = _MAX_CELL) -> str:
    """A value that cannot break a markdown table row."""
    text = " ".join(str(value if value is not None else "").split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"
