"""A single self-contained HTML page for one A/B evaluation, readable by someone who will not open the JSON.

It renders the record `recops.evaluation.ab.ab_summary` builds: the decision and its reasons first, then the
statistics, the figures (per-user delta histogram, lift with its interval, per-segment lifts) and the online
(with the primary metric between the arms, without and with CUPED, and how much narrower CUPED made its
interval), interleaving and guardrail tables. Figures are drawn with matplotlib's object API on the Agg canvas
(no pyplot state, no display needed) and embedded as base64 PNG, so the file has no external assets and can be
mailed or logged as an MLflow artifact as it is. This module computes no statistics of its own.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from recops.io import write_text

_CHAMPION_COLOUR, _CHALLENGER_COLOUR, _NEUTRAL_COLOUR = "#4c72b0", "#dd8452", "#8c8c8c"

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 60em;
       color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.decision { display: inline-block; padding: 0.2em 0.8em; border-radius: 0.3em; color: white; font-weight: bold; }
.ship { background: #2e7d32; } .hold { background: #c62828; }
table { border-collapse: collapse; margin: 0.6em 0; } th, td { border: 1px solid #ddd; padding: 0.25em 0.7em; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
li.for { color: #2e7d32; } li.against { color: #c62828; } li.note { color: #555; }
.pass { color: #2e7d32; font-weight: bold; } .fail { color: #c62828; font-weight: bold; }
img { max-width: 100%; }
"""


def write_html_report(summary: Mapping[str, Any], per_user_delta: np.ndarray,
                      segments: Mapping[str, np.ndarray] | None, path: Path) -> Path:
    """Write the report of ``summary`` (from `ab_summary`) to ``path`` atomically and return ``path``.

    ``per_user_delta`` is challenger minus champion per user (the histogram). ``segments`` maps a segmentation
    name to one label per user, as given to `ab_summary`; with it, the per-user deltas of each label are drawn
    as box plots next to the per-segment lift bars, which come from ``summary["segments"]``.
    """
    delta = np.asarray(per_user_delta, dtype=np.float64)
    metric = str(summary.get("primary_metric", "metric"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>A/B evaluation: {_esc(metric)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>A/B evaluation of {_esc(summary.get('model_name', 'the model'))}: version "
        f"{_esc(summary.get('challenger_version', '?'))} (challenger) vs version "
        f"{_esc(summary.get('champion_version', '?'))} (champion)</h1>",
        _decision_section(summary),
        "<h2>What is compared</h2>",
        _compared_section(summary),
        "<h2>Offline paired test</h2>",
        _statistics_table(summary, metric),
        _image(_delta_histogram(delta, metric), f"per-user {metric} delta"),
        _image(_lift_figure(summary, metric), "relative lift with its interval"),
    ]
    segment_summary = summary.get("segments") or {}
    if segment_summary or segments:
        parts.append("<h2>Segments</h2>")
        parts.append("<p>Descriptive: with several segments, one crossing zero by chance is expected.</p>")
        for name in sorted(set(segment_summary) | set(segments or {})):
            labels = (segments or {}).get(name)
            parts.append(f"<h3>{_esc(name)}</h3>")
            parts.append(_image(_segment_figure(name, segment_summary.get(name, {}), delta, labels, metric),
                                f"lift by {name}"))
            parts.append(_segment_table(segment_summary.get(name, {})))
    parts.append("<h2>Simulated online test</h2>")
    parts.append(_online_table(summary.get("online")))
    online_metric = summary.get("online_metric")
    if online_metric:
        parts.append(f"<h3>{_esc(metric)} between the arms, without and with CUPED</h3>")
        parts.append(_online_metric_table(online_metric))
        if _number(online_metric.get("ci_width_ratio")):
            parts.append(_image(_cuped_figure(online_metric), "between-arm interval without and with CUPED"))
    parts.append("<h2>Team-draft interleaving</h2>")
    parts.append(_interleaving_table(summary.get("interleaving")))
    parts.append("<h2>Guardrails</h2>")
    parts.append(_guardrail_table(summary.get("guardrails") or []))
    parts.append("</body></html>\n")
    write_text("\n".join(parts), path)
    return path


# ----------------------------------------------------------------------------------------------------- sections
def _compared_section(summary: Mapping[str, Any]) -> str:
    """The two versions (when, which commit, parameters, data), the snapshot they were judged on, and the
    configuration keys that differ between them."""
    versions = summary.get("versions") or {}
    rows = []
    for role in ("champion", "challenger"):
        card = versions.get(role) or {}
        md5 = card.get("data_md5") or {}
        rows.append([role, card.get("version", summary.get(f"{role}_version", "")),
                     str(card.get("created_at") or "")[:19].replace("T", " "), str(card.get("git_commit") or "")[:10],
                     str(card.get("params_hash") or "")[:10], card.get("data_source") or "",
                     str(md5.get("interactions", ""))[:10]])
    snapshot = summary.get("snapshot") or {}
    parts = [_table(["", "version", "trained (UTC)", "git commit", "params hash", "data source",
                     "data md5 (interactions)"], rows),
             f"<p>Judged on the snapshot with interactions md5 "
             f"<code>{_esc(str(snapshot.get('data_md5.interactions', ''))[:10])}</code>, "
             f"{_esc(summary.get('test_users', ''))} test users; report made {_esc(summary.get('created', ''))}.</p>"]
    diff = summary.get("param_diff")
    if diff is not None:
        parts.append("<h3>What changed between the two versions' configurations</h3>")
        parts.append(_table(["parameter", "champion", "challenger"],
                            [[d["key"], d["champion"], d["challenger"]] for d in diff])
                     if diff else "<p>Nothing: the same configuration (trained on other data, or another run).</p>")
    return "\n".join(parts)


def _decision_section(summary: Mapping[str, Any]) -> str:
    decision = str(summary.get("decision", "hold"))
    items = []
    for reason in summary.get("reasons") or []:
        kind = str(reason).split(":", 1)[0]
        css = kind if kind in ("for", "against", "note") else "note"
        items.append(f'<li class="{css}">{_esc(reason)}</li>')
    return (f'<p>Decision: <span class="decision {"ship" if decision == "ship" else "hold"}">'
            f"{_esc(decision.upper())}</span></p><ul>{''.join(items)}</ul>")


def _statistics_table(summary: Mapping[str, Any], metric: str) -> str:
    alpha = summary.get("alpha")
    level = f"{1 - alpha:.0%}" if isinstance(alpha, (int, float)) else "95%"
    rows = [
        ("primary metric", metric),
        ("users (paired)", summary.get("n_users")),
        (f"champion mean {metric}", summary.get("mean_a")),
        (f"challenger mean {metric}", summary.get("mean_b")),
        ("delta (challenger - champion)", summary.get("delta")),
        (f"delta {level} bootstrap CI", _interval(summary.get("ci_low"), summary.get("ci_high"))),
        ("relative lift", _pct(summary.get("lift"))),
        (f"lift {level} bootstrap CI", _interval(summary.get("lift_ci_low"), summary.get("lift_ci_high"), pct=True)),
        ("paired t-test p-value", _p(summary.get("p_value"))),
        ("Wilcoxon signed-rank p-value", _p(summary.get("wilcoxon_p_value"))),
        (f"minimum detectable delta ({_fmt(summary.get('power'))} power)", summary.get("mde")),
        ("minimum detectable lift", _pct(summary.get("mde_relative"))),
        ("required lift to ship", _pct(summary.get("min_lift"))),
        ("users needed to detect the required lift", summary.get("n_users_for_min_lift")),
        ("bootstrap resamples", summary.get("n_boot")),
    ]
    return _table(("statistic", "value"), rows)


def _online_table(online: Mapping[str, Any] | None) -> str:
    if not online:
        return "<p>Not run.</p>"
    arms = [(arm, online.get(arm) or {}) for arm in ("champion", "challenger")]
    per_arm = _table(("arm", "users", "clicks", f"CTR@{online.get('k')}"),
                     [(arm, v.get("n"), v.get("clicks"), v.get("ctr")) for arm, v in arms])
    srm = "yes: the assignment is broken" if online.get("srm") else "no"
    rows = [
        ("CTR difference", online.get("ctr_diff")),
        ("difference 95% CI (Wald)", _interval(online.get("ctr_diff_ci_low"), online.get("ctr_diff_ci_high"))),
        ("relative CTR lift", _pct(online.get("ctr_lift"))),
        ("lift 95% CI", _interval(online.get("ctr_lift_ci_low"), online.get("ctr_lift_ci_high"), pct=True)),
        ("two-proportion z", online.get("z")),
        ("z-test p-value", _p(online.get("p_value"))),
        ("challenger share: expected / observed",
         f"{_fmt(online.get('expected_split'))} / {_fmt(online.get('observed_split'))}"),
        ("sample-ratio check p-value", _p(online.get("srm_p_value"))),
        ("sample-ratio mismatch", srm),
    ]
    if _number(online.get("ctr_ci_width_ratio")):
        rows[2:2] = [
            ("CTR difference with CUPED", online.get("ctr_diff_cuped")),
            ("CUPED difference 95% CI", _interval(online.get("ctr_diff_ci_low_cuped"),
                                                  online.get("ctr_diff_ci_high_cuped"))),
            ("CUPED CI width / unadjusted CI width", online.get("ctr_ci_width_ratio")),
        ]
    return per_arm + _table(("statistic", "value"), rows)


def _online_metric_table(test: Mapping[str, Any]) -> str:
    """The primary metric's difference between the arms: the plain interval, then CUPED's and the ratio."""
    metric = test.get("metric")
    rows: list[tuple[str, Any]] = [
        ("users: champion / challenger arm", f"{_fmt(test.get('n_champion'))} / {_fmt(test.get('n_challenger'))}"),
        (f"mean {metric}: champion / challenger arm",
         f"{_fmt(test.get('mean_champion'))} / {_fmt(test.get('mean_challenger'))}"),
        ("difference (challenger - champion)", test.get("delta")),
        ("difference 95% CI (normal, unadjusted)", _interval(test.get("ci_low"), test.get("ci_high"))),
        ("p-value (unadjusted)", _p(test.get("p_value"))),
    ]
    if test.get("covariate") is None:
        rows.append(("CUPED", "off (ab.cuped)"))
        return _table(("statistic", "value"), rows)
    rows += [
        ("CUPED covariate (pre-period = the validation fold)", test.get("covariate")),
        ("correlation of covariate and outcome", test.get("correlation")),
        ("theta", test.get("theta")),
        ("users without a pre-period value (given the mean)", test.get("n_imputed")),
        ("difference with CUPED", test.get("delta_cuped")),
        ("difference 95% CI with CUPED", _interval(test.get("ci_low_cuped"), test.get("ci_high_cuped"))),
        ("p-value with CUPED", _p(test.get("p_value_cuped"))),
        ("variance with CUPED / without", test.get("variance_ratio")),
        ("CI width with CUPED / without", test.get("ci_width_ratio")),
    ]
    return _table(("statistic", "value"), rows)


def _interleaving_table(result: Mapping[str, Any] | None) -> str:
    if not result:
        return "<p>Not run.</p>"
    rows = [
        ("users", result.get("n_users")),
        ("clicks on champion / challenger items",
         f"{_fmt(result.get('clicks_champion'))} / {_fmt(result.get('clicks_challenger'))}"),
        ("users preferring champion", result.get("wins_champion")),
        ("users preferring challenger", result.get("wins_challenger")),
        ("ties (including no clicks)", result.get("ties")),
        ("challenger preference", result.get("challenger_preference")),
        ("preference 95% CI", _interval(result.get("preference_ci_low"), result.get("preference_ci_high"))),
        ("binomial test p-value", _p(result.get("p_value"))),
    ]
    return _table(("statistic", "value"), rows)


def _guardrail_table(guards: Sequence[Mapping[str, Any]]) -> str:
    if not guards:
        return "<p>None checked.</p>"
    rows = []
    for guard in guards:
        status = str(guard.get("status", "pass" if guard.get("passed") else "fail"))
        css = {"pass": "pass", "fail": "fail"}.get(status, "")
        rows.append((guard.get("name"), guard.get("champion"), guard.get("challenger"), guard.get("limit"),
                     _Raw(f'<span class="{css}">{_esc(status)}</span>'), guard.get("reason")))
    return _table(("guardrail", "champion", "challenger", "limit", "status", "reason"), rows)


def _segment_table(per_label: Mapping[str, Mapping[str, Any]]) -> str:
    if not per_label:
        return ""
    rows = [(label, v.get("n"), v.get("mean_a"), v.get("mean_b"), v.get("delta"),
             _interval(v.get("ci_low"), v.get("ci_high")), _pct(v.get("lift")),
             _interval(v.get("lift_ci_low"), v.get("lift_ci_high"), pct=True))
            for label, v in per_label.items()]
    return _table(("segment", "users", "champion", "challenger", "delta", "delta CI", "lift", "lift CI"), rows)


# ------------------------------------------------------------------------------------------------------ figures
def _delta_histogram(delta: np.ndarray, metric: str) -> Figure:
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    finite = delta[np.isfinite(delta)]
    if len(finite):
        ax.hist(finite, bins=min(60, max(10, int(np.sqrt(len(finite))))), color=_NEUTRAL_COLOUR)
        unchanged = float(np.mean(finite == 0))
        if unchanged > 0.5:  # most users are unchanged: a log scale keeps the moved ones visible
            ax.set_yscale("log")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.axvline(float(finite.mean()), color=_CHALLENGER_COLOUR, linewidth=1.5,
                   label=f"mean {finite.mean():+.4f}")
        ax.legend(loc="upper right")
        ax.set_title(f"Per-user {metric} delta (challenger - champion); {unchanged:.0%} of users unchanged")
    ax.set_xlabel(f"{metric} delta")
    ax.set_ylabel("users")
    return fig


def _lift_figure(summary: Mapping[str, Any], metric: str) -> Figure:
    online = summary.get("online") or {}
    rows = [(f"offline {metric}", summary.get("lift"), summary.get("lift_ci_low"), summary.get("lift_ci_high")),
            (f"simulated CTR@{online.get('k', '')}", online.get("ctr_lift"), online.get("ctr_lift_ci_low"),
             online.get("ctr_lift_ci_high"))]
    fig = Figure(figsize=(7, 2.4))
    ax = fig.add_subplot()
    _interval_plot(ax, [(name, point, low, high) for name, point, low, high in rows if _number(point)])
    min_lift = summary.get("min_lift")
    if _number(min_lift) and min_lift > 0:
        ax.axvline(100 * min_lift, color=_CHALLENGER_COLOUR, linestyle="--", linewidth=1, label="required lift")
        ax.legend(loc="lower right")
    ax.set_title("Relative lift of the challenger, with its interval")
    return fig


def _cuped_figure(test: Mapping[str, Any]) -> Figure:
    """The between-arm difference with its interval, unadjusted and with CUPED, on one axis."""
    rows = [("unadjusted", test.get("delta"), test.get("ci_low"), test.get("ci_high")),
            ("CUPED", test.get("delta_cuped"), test.get("ci_low_cuped"), test.get("ci_high_cuped"))]
    fig = Figure(figsize=(7, 1.9))
    ax = fig.add_subplot()
    shown = [(name, float(point), float(low), float(high)) for name, point, low, high in rows
             if _number(point) and _number(low) and _number(high)]
    y = np.arange(len(shown))[::-1]
    points = np.array([r[1] for r in shown])
    errors = np.vstack([points - np.array([r[2] for r in shown]), np.array([r[3] for r in shown]) - points])
    ax.errorbar(points, y, xerr=errors.clip(min=0), fmt="o", color="black", capsize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [r[0] for r in shown])
    ax.margins(y=0.4)
    ax.set_xlabel(f"{test.get('metric')} difference (challenger arm - champion arm)")
    ax.set_title(f"CUPED interval: {float(test['ci_width_ratio']):.3f}x the width of the unadjusted one")
    return fig


def _segment_figure(name: str, per_label: Mapping[str, Mapping[str, Any]], delta: np.ndarray,
                    labels: np.ndarray | None, metric: str) -> Figure:
    with_boxes = labels is not None and len(labels) == len(delta)
    fig = Figure(figsize=(10 if with_boxes else 7, 1.4 + 0.5 * max(len(per_label), 2)))
    ax = fig.add_subplot(1, 2, 1) if with_boxes else fig.add_subplot()
    _interval_plot(ax, [(f"{label} (n={v.get('n')})", v.get("lift"), v.get("lift_ci_low"), v.get("lift_ci_high"))
                        for label, v in per_label.items() if _number(v.get("lift"))], bars=True)
    ax.set_title(f"Lift by {name}")
    if with_boxes:
        assert labels is not None
        box_ax = fig.add_subplot(1, 2, 2)
        names = [str(u) for u in np.unique(labels)]
        groups = [delta[np.asarray(labels).astype(str) == label] for label in names]
        # first label on top, as in the lift plot
        box_ax.boxplot(groups, positions=np.arange(len(names))[::-1], orientation="horizontal", tick_labels=names,
                       showmeans=True, showfliers=False)
        box_ax.axvline(0, color="black", linewidth=0.8)
        box_ax.set_title(f"Per-user {metric} delta by {name}")
    fig.tight_layout()
    return fig


def _interval_plot(ax: Any, rows: Sequence[tuple[str, Any, Any, Any]], bars: bool = False) -> None:
    """Horizontal points (or bars) in percent with error bars where the interval is known."""
    if not rows:
        ax.text(0.5, 0.5, "no lift to show", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
        return
    y = np.arange(len(rows))[::-1]
    points = np.array([100 * float(r[1]) for r in rows])
    lows = np.array([100 * float(r[2]) if _number(r[2]) else np.nan for r in rows])
    highs = np.array([100 * float(r[3]) if _number(r[3]) else np.nan for r in rows])
    errors = np.nan_to_num(np.vstack([points - lows, highs - points]), nan=0.0).clip(min=0)
    colours = [_CHALLENGER_COLOUR if p >= 0 else _CHAMPION_COLOUR for p in points]
    if bars:
        ax.barh(y, points, color=colours, alpha=0.6)
    ax.errorbar(points, y, xerr=errors, fmt="o", color="black", capsize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [r[0] for r in rows])
    ax.set_xlabel("relative lift (%)")
    ax.margins(y=0.3)


def _image(fig: Figure, alt: str) -> str:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<p><img alt="{_esc(alt)}" src="data:image/png;base64,{encoded}"></p>'


# ----------------------------------------------------------------------------------------------------- helpers
class _Raw(str):
    """Cell content that is already HTML."""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for value in row:
            css = ' class="num"' if _number(value) else ""
            cells.append(f"<td{css}>{value if isinstance(value, _Raw) else _esc(_fmt(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}" if value != 0 and abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


def _p(value: Any) -> str:
    """A p-value; one that underflowed to 0 is shown as a bound, not as an impossible exact 0."""
    if not _number(value):
        return "n/a"
    return "< 1e-300" if value == 0 else f"{value:.3g}"


def _pct(value: Any) -> str:
    return f"{100 * value:+.2f}%" if _number(value) else "n/a"


def _interval(low: Any, high: Any, pct: bool = False) -> str:
    if not (_number(low) and _number(high)):
        return "n/a"
    return f"{_pct(low)} to {_pct(high)}" if pct else f"{low:+.4f} to {high:+.4f}"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


