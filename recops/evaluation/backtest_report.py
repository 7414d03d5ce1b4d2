"""A single self-contained HTML page for one ``recops backtest`` run, readable by someone who will not open the JSON.

It renders the report `recops.evaluation.backtest.summarise` builds, in this order: the run (creation date, protocol and
configuration), a verdict (pooled NDCG@10 and Recall@20 lift of the two-stage system ``recops`` over the best
single-stage peer and over recent popularity, with the paired bootstrap interval, and whether the lift target is
met), the windows (periods, sizes, run time), the pooled metrics of every model with the best value of each
column in bold, the lift of recops over every peer with its interval, one figure of NDCG@10 and one of Recall@20
per window and model, and per window every model's metrics with the parameters chosen for each peer.

Missing parts (a peer, a metric, a lift) and NaN values are shown as "n/a" rather than failing. Figures are drawn
the way `recops.evaluation.ab_report` draws them (matplotlib's object API on the Agg canvas, embedded as base64
PNG) and the page shares its style, so the file has no external assets and the two reports look alike. This
module computes no statistics of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from recops.evaluation.ab_report import _STYLE, _Raw, _esc, _fmt, _image, _interval, _pct, _table
from recops.io import write_text

_RECOPS = "recops"
_RECENT = "recent_popularity"
_POOLED_COLUMNS = ("ndcg@10", "recall@10", "recall@20", "map@10", "mrr@10", "hitrate@10")
_WINDOW_COLUMNS = ("ndcg@10", "recall@20", "coverage@10")
_PLOTTED = (("ndcg@10", "NDCG@10"), ("recall@20", "Recall@20"))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "d")
_RECOPS_MARKER = "*"

# a best value is raw HTML, so its cell is not marked numeric: the block keeps it right-aligned all the same
_EXTRA_STYLE = """
td > b.best { display: block; text-align: right; font-variant-numeric: tabular-nums; }
p.meta { color: #555; margin-top: 0; }
"""


def write_html_report(report: Mapping[str, Any], path: Path) -> Path:
    """Write the page of ``report`` (the JSON of ``recops backtest``) to ``path`` atomically and return ``path``.

    The parent folder is created; the page is written to a temporary file next to ``path`` and renamed over it.
    """
    windows = [w for w in report.get("windows") or [] if isinstance(w, Mapping)]
    models = _model_names(report, windows)
    config = report.get("config") or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>recops backtest {_esc(_fmt(report.get('created')))}</title>"
        f"<style>{_STYLE}{_EXTRA_STYLE}</style></head><body>",
        "<h1>recops backtest</h1>",
        _header(report, config),
        "<h2>Verdict</h2>",
        _verdict(report),
        "<h2>Windows</h2>",
        _windows_table(windows),
        "<h2>Pooled metrics</h2>",
        _pooled_section(report, models),
        "<h2>Lift of recops over each peer</h2>",
        _lift_section(report, config),
        "<h2>Candidate recall</h2>",
        _recall_section(report),
        "<h2>Metrics per window</h2>",
    ]
    for metric, label in _PLOTTED:
        parts.append(_image(_window_figure(windows, models, metric, label), f"{label} per window and model"))
    parts.append("<h2>Per window: metrics and chosen parameters</h2>")
    parts.extend(_window_detail(window, models) for window in windows)
    parts.append("</body></html>\n")
    write_text("\n".join(parts), path)
    return path


# ----------------------------------------------------------------------------------------------------- sections
def _header(report: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    test = config.get("test_days")
    valid = config.get("valid_days") or test  # null: as long as the test period
    step = config.get("step_days") or test    # null: windows side by side
    seeds = config.get("seeds")
    settings = [f"{_fmt(config.get('windows'))} windows", f"test {_days(test)}", f"validation {_days(valid)}",
                f"step {_days(step)}", f"{_fmt(seeds)} seed{'' if seeds == 1 else 's'}", f"k = {_fmt(config.get('k'))}"]
    if config.get("quick"):
        settings.append("quick peer grids")
    data = report.get("data") or {}
    data_line = (f"Data: {_fmt(data.get('n_users'))} users, {_fmt(data.get('n_items'))} items, "
                 f"{_fmt(data.get('rows'))} interactions; seed {_fmt(report.get('seed'))}; "
                 f"run time {_seconds(report.get('seconds'))}.")
    return (f'<p class="meta">Created {_esc(_fmt(report.get("created")))} &middot; '
            f'protocol: {_esc(_fmt(report.get("protocol")))}</p>'
            f"<p>Configuration: {_esc(' · '.join(settings))}.</p><p>{_esc(data_line)}</p>")


def _verdict(report: Mapping[str, Any]) -> str:
    lifts = report.get("lift") or {}
    recent = report.get("recent_popularity_lift") or {}
    target = report.get("lift_target_pct")
    level = _level(report)
    pooled = report.get("pooled") or {}
    sentences = [f"Pooled over {_esc(_fmt(pooled.get('rows')))} (window, user) rows:"]
    verdicts: list[str] = []
    for metric, label in _PLOTTED:
        lift = lifts.get(metric)
        if not isinstance(lift, Mapping):
            sentences.append(f"{label}: no lift in the report.")
            continue
        best = lift.get("best_peer")
        over_best = (lift.get("over") or {}).get(best) or {}
        text = (f"recops' {label} is {_esc(_fmt(lift.get('recops_value')))}, "
                f"<b>{_esc(_pct_points(lift.get('lift_over_best_pct')))}</b> over the best peer "
                f"<b>{_esc(_fmt(best))}</b> ({_esc(_fmt(lift.get('best_peer_value')))}; {level} CI "
                f"{_esc(_ci(over_best))})")
        rec = recent.get(metric) if isinstance(recent, Mapping) else None
        if best == _RECENT:
            text += ", which is recent popularity"
        elif isinstance(rec, Mapping):
            text += (f" and <b>{_esc(_pct_points(rec.get('lift_pct')))}</b> over recent popularity "
                     f"({level} CI {_esc(_ci(rec))})")
        else:
            text += "; recent popularity was not among the peers"
        sentences.append(text + ".")
        met = _meets_target(lift, target)
        verdict = "n/a" if met is None else ("met" if met else "not met")
        css = {"met": "pass", "not met": "fail"}.get(verdict, "")
        verdicts.append(f'{label} <span class="{css}">{verdict}</span>')
    if verdicts:
        goal = f"+{target:g}%" if _is_number(target) else "n/a"
        sentences.append(f"Target of {_esc(goal)} over the best peer: {', '.join(verdicts)}.")
    return f"<p>{' '.join(sentences)}</p>"


def _windows_table(windows: Sequence[Mapping[str, Any]]) -> str:
    if not windows:
        return "<p>No windows in the report.</p>"
    rows = [(w.get("window"), w.get("valid_start"), w.get("cut"), w.get("test_end"), w.get("train_rows"),
             w.get("test_users"), _seconds(w.get("seconds"))) for w in windows]
    return _table(("window", "validation start", "cut (test start)", "test end", "train rows", "warm test users",
                   "run time"), rows)


def _pooled_section(report: Mapping[str, Any], models: Sequence[str]) -> str:
    metrics = (report.get("pooled") or {}).get("metrics") or {}
    if not metrics:
        return "<p>No pooled metrics in the report.</p>"
    names = [name for name in models if name in metrics]
    values = {name: metrics.get(name) or {} for name in names}
    table = _best_table(("model",), _POOLED_COLUMNS, [(name, (), values[name]) for name in names])
    return f"<p>Mean over all (window, warm test user) rows; the best value of each column in bold.</p>{table}"


def _recall_section(report: Mapping[str, Any]) -> str:
    recall = report.get("candidate_recall") or {}
    if not recall:
        return "<p>No candidate recall in the report.</p>"
    rows = [(name, value) for name, value in recall.items()]
    return ("<p>Share of the warm test users' test interactions among the two-stage list's candidates (merged) "
            "and among each source's own top n, mean over the windows: what the ranker can at best bring to the "
            "front.</p>" + _table(("candidates", "recall"), rows))


def _lift_section(report: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    lifts = report.get("lift") or {}
    if not lifts:
        return "<p>No lifts in the report.</p>"
    level = _level(report)
    rows = []
    for metric, lift in lifts.items():
        if not isinstance(lift, Mapping):
            continue
        best = lift.get("best_peer")
        for peer, over in (lift.get("over") or {}).items():
            over = over if isinstance(over, Mapping) else {}
            name = _Raw(f"{_esc(peer)}{' <b>(best peer)</b>' if peer == best else ''}")
            rows.append((metric, name, _pct_points(over.get("lift_pct")), _ci(over)))
    resamples = config.get("bootstrap_resamples")
    return (f"<p>Relative lift of recops' pooled mean over each peer's, with the {level} paired percentile "
            f"bootstrap interval ({_esc(_fmt(resamples))} resamples of the pooled rows).</p>"
            + _table(("metric", "peer", "lift", f"{level} CI"), rows))


def _window_detail(window: Mapping[str, Any], models: Sequence[str]) -> str:
    per_model = window.get("models") or {}
    names = [name for name in models if name in per_model]
    rows = []
    for name in names:
        result = per_model.get(name) or {}
        rows.append((name, (result.get("valid_ndcg"), _params(result.get("params"))), result.get("metrics") or {}))
    table = _best_table(("model",), _WINDOW_COLUMNS, rows, extra=("validation ndcg@10", "chosen parameters"))
    return f"<h3>Window {_esc(_fmt(window.get('window')))}: cut {_esc(_fmt(window.get('cut')))}</h3>{table}"


def _best_table(head: Sequence[str], columns: Sequence[str],
                rows: Sequence[tuple[str, Sequence[Any], Mapping[str, Any]]], extra: Sequence[str] = ()) -> str:
    """A table of one row per model: its name, ``columns`` of its metrics (the best of each in bold), ``extra``."""
    best = {}
    for column in columns:
        numbers = [v for _, _, metrics in rows if _is_number(v := metrics.get(column))]
        best[column] = max(numbers) if numbers else None
    body = []
    for name, extras, metrics in rows:
        cells: list[Any] = [name]
        for column in columns:
            value = metrics.get(column)
            bold = _is_number(value) and value == best[column]
            cells.append(_Raw(f'<b class="best">{_esc(_fmt(value))}</b>') if bold else value)
        body.append((*cells, *extras))
    return _table((*head, *columns, *extra), body)


# ------------------------------------------------------------------------------------------------------ figures
def _window_figure(windows: Sequence[Mapping[str, Any]], models: Sequence[str], metric: str, label: str) -> Figure:
    """One line with markers per model over the windows' cut dates; recops drawn thicker, legend below."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    x = np.arange(len(windows))
    colours = matplotlib.colormaps["tab10" if len(models) <= 10 else "tab20"]
    peers = [name for name in models if name != _RECOPS]
    drawn = 0
    for index, name in enumerate(models):
        y = np.array([_as_float((((w.get("models") or {}).get(name) or {}).get("metrics") or {}).get(metric))
                      for w in windows], dtype=np.float64)
        if not np.isfinite(y).any():
            continue
        ours = name == _RECOPS
        marker = _RECOPS_MARKER if ours else _MARKERS[peers.index(name) % len(_MARKERS)]
        ax.plot(x, y, marker=marker, color=colours(index % colours.N), label=_label(name),
                linewidth=3.0 if ours else 1.4, markersize=11 if ours else 6, zorder=3 if ours else 2)
        drawn += 1
    if drawn:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=min(drawn, 4), frameon=False)
    else:
        ax.text(0.5, 0.5, f"no {label} to show", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(x, _cut_labels(windows))
    ax.set_xlim(-0.3, max(len(windows) - 1, 0) + 0.3)
    ax.grid(alpha=0.3)
    ax.set_xlabel("window cut (start of its test period)")
    ax.set_ylabel(f"{label} (warm test users)")
    ax.set_title(f"{label} per window")
    return fig


def _cut_labels(windows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cut dates (the day alone unless two windows share it)."""
    full = [_label(_fmt(w.get("cut"))) for w in windows]
    days = [text.split(" ")[0] for text in full]
    return days if len(set(days)) == len(days) else full


def _label(text: Any) -> str:
    """Plain text for matplotlib: a ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


# ----------------------------------------------------------------------------------------------------- helpers
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _as_float(value: Any) -> float:
    return float(value) if _is_number(value) else float("nan")


def _pct_points(value: Any) -> str:
    """A lift already in percent (the backtest's ``*_pct`` fields)."""
    return _pct(value / 100) if _is_number(value) else "n/a"


def _ci(lift: Mapping[str, Any]) -> str:
    low, high = lift.get("low_pct"), lift.get("high_pct")
    return _interval(low / 100 if _is_number(low) else None, high / 100 if _is_number(high) else None, pct=True)


def _meets_target(lift: Mapping[str, Any], target: Any) -> bool | None:
    if isinstance(lift.get("meets_target"), bool):
        return lift["meets_target"]
    value = lift.get("lift_over_best_pct")
    return bool(value >= target) if _is_number(value) and _is_number(target) else None


def _level(report: Mapping[str, Any]) -> str:
    confidence = (report.get("config") or {}).get("confidence")
    return f"{confidence:.0%}" if _is_number(confidence) else "95%"


def _days(value: Any) -> str:
    return f"{value:g} days" if _is_number(value) else "n/a"


def _seconds(value: Any) -> str:
    return f"{value:.1f} s" if _is_number(value) else "n/a"


def _params(params: Any) -> str:
    if isinstance(params, Mapping):
        return ", ".join(f"{key}={value:g}" if _is_number(value) else f"{key}={_fmt(value)}"
                         for key, value in params.items()) or "none"
    return _fmt(params)


def _model_names(report: Mapping[str, Any], windows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every model in the report in its order of appearance, recops last."""
    names: dict[str, None] = {}
    for name in ((report.get("pooled") or {}).get("metrics") or {}):
        names[str(name)] = None
    for window in windows:
        for name in window.get("models") or {}:
            names[str(name)] = None
    return [name for name in names if name != _RECOPS] + ([_RECOPS] if _RECOPS in names else [])
