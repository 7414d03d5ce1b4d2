"""What the ``recops`` command prints: the metrics, lift, segment, protocol, candidate and timing tables, the model
list and the backtest summary, as rich tables built from the reports' dicts. No command logic here: the commands
(:mod:`recops_cli.app`) read the reports and pass them in."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()

MODEL_ORDER = ("popularity", "recent_popularity", "decayed_popularity", "mf", "ease", "itemknn", "recent_itemknn")
METRIC_ORDER = ("ndcg", "recall", "precision", "map", "mrr", "hitrate", "coverage", "novelty", "ild")


def _models(metrics: dict[str, float], split: str) -> dict[str, dict[str, float]]:
    models: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if parts[0] == split and len(parts) == 3 and parts[1] not in ("candidates", "features"):
            models.setdefault(parts[1], {})[parts[2]] = value
    return {m: models[m] for m in sorted(models, key=lambda m: (
        m == "ranker", MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m))}


def metrics_table(metrics: dict[str, float], split: str = "test") -> Table:
    """Metrics as rows, the models (single-stage baselines, then the ranker) as columns, for one split."""
    models = _models(metrics, split)
    names = sorted({m for values in models.values() for m in values if "@" in m},
                   key=lambda m: (METRIC_ORDER.index(m.split("@")[0]) if m.split("@")[0] in METRIC_ORDER
                                  else len(METRIC_ORDER), int(m.split("@")[1])))
    users = int(models.get("ranker", next(iter(models.values()), {})).get("users", 0))
    table = Table(title=f"{split} metrics ({users} users)", title_justify="left")
    table.add_column("metric")
    for model in models:
        table.add_column("two-stage" if model == "ranker" else model, justify="right")
    for name in names:
        table.add_row(name, *(f"{models[model].get(name, float('nan')):.4f}" for model in models))
    return table


def lift_lines(metrics: dict[str, float], split: str = "test",
               names: tuple[str, ...] = ("ndcg@10", "recall@20")) -> list[str]:
    """'ndcg@10: two-stage 0.18 vs best baseline ease 0.13 (+38.0%)' for each metric present."""
    models = _models(metrics, split)
    ranker = models.pop("ranker", None)
    lines = []
    for name in names:
        scored = {m: v[name] for m, v in models.items() if name in v}
        if ranker is None or name not in ranker or not scored:
            continue
        best = max(scored, key=scored.get)
        lift = (ranker[name] / scored[best] - 1.0) * 100 if scored[best] > 0 else float("nan")
        lines.append(f"{name}: two-stage {ranker[name]:.4f} vs best single-stage {best} {scored[best]:.4f} "
                     f"({lift:+.1f}%)")
    return lines


def segments_table(metrics: dict[str, float], metric: str = "ndcg@10") -> Table | None:
    """``metric`` per user-activity segment (rows) and model (columns), on test."""
    values: dict[str, dict[str, float]] = {}
    users: dict[str, float] = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if parts[0] == "test" and len(parts) == 5 and parts[2] == "segment":
            if parts[4] == metric:
                values.setdefault(parts[3], {})[parts[1]] = value
            elif parts[4] == "users" and parts[1] == "ranker":
                users[parts[3]] = value
    if not values:
        return None
    models = list(_models(metrics, "test"))
    table = Table(title=f"test {metric} by user activity (history size terciles)", title_justify="left")
    table.add_column("segment")
    table.add_column("users", justify="right")
    for model in models:
        table.add_column("two-stage" if model == "ranker" else model, justify="right")
    for segment in ("cold", "light", "medium", "heavy"):
        if segment in values:
            table.add_row(segment, f"{int(users.get(segment, 0))}",
                          *(f"{values[segment].get(m, float('nan')):.4f}" for m in models))
    return table


# the backtest's peer names as the pipeline's baselines call them
_BACKTEST_NAMES = {"recops": "ranker", "als": "mf"}


def protocols_table(metrics: dict[str, float], report: dict | None, split_method: str,
                    names: tuple[str, ...] = ("ndcg@10", "recall@20")) -> Table:
    """The two-stage list and every single-stage peer on both protocols side by side: the pipeline's own split
    (``split.method``) and the rolling timeline of ``recops backtest`` (pooled over its windows)."""
    split_models = _models(metrics, "test")
    timeline = {_BACKTEST_NAMES.get(name, name): values
                for name, values in ((report or {}).get("pooled", {}).get("metrics", {})).items()}
    models = [m for m in split_models if m != "ranker"]
    models += [m for m in timeline if m not in models and m != "ranker"]
    models.append("ranker")
    windows = len((report or {}).get("windows", []))
    table = Table(title=f"quality on both protocols: test split ({split_method}) | rolling timeline "
                        f"({windows} windows, pooled; `recops backtest`)", title_justify="left")
    table.add_column("model", no_wrap=True)
    for protocol in ("split", "timeline"):
        for name in names:
            table.add_column(f"{protocol} {name}", justify="right")
    best = {(p, n): max((v.get(n, float("-inf")) for v in source.values()), default=float("nan"))
            for p, source in (("split", split_models), ("timeline", timeline)) for n in names}

    def cell(source: dict, protocol: str, model: str, name: str) -> str:
        value = source.get(model, {}).get(name)
        if value is None:
            return "-"
        return f"[bold]{value:.4f}[/]" if value == best[(protocol, name)] else f"{value:.4f}"

    for model in models:
        table.add_row("two-stage" if model == "ranker" else model,
                      *[cell(split_models, "split", model, n) for n in names],
                      *[cell(timeline, "timeline", model, n) for n in names])
    return table


def candidates_table(metrics: dict[str, float]) -> Table | None:
    """Candidate recall@N of the merged candidates and of each source (rows) on valid and test (columns)."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[0] in ("valid", "test") and parts[1] == "candidates" and "recall@" in parts[-1]:
            source = "merged" if len(parts) == 3 else parts[2]
            rows.setdefault(source, {})[parts[0]] = value
            depth = parts[-1]
    if not rows:
        return None
    table = Table(title=f"candidate {depth} (share of the held-out items among the candidates)",
                  title_justify="left")
    for column in ("source", "valid", "test"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name in sorted(rows, key=lambda n: (n != "merged", n)):
        table.add_row(name, *(f"{rows[name][fold]:.4f}" if fold in rows[name] else "" for fold in ("valid", "test")))
    return table


def timings_table(timings: dict[str, float]) -> Table | None:
    """Seconds per stage (and the steps a stage times), in pipeline order."""
    if not timings:
        return None
    table = Table(title="timings of the last run (s)", title_justify="left")
    table.add_column("what")
    table.add_column("seconds", justify="right")
    for key, value in timings.items():
        table.add_row(key.removesuffix(".seconds").removesuffix("_seconds"), f"{value:.2f}")
    return table


def print_summary(metrics: dict[str, float], verbose: bool = False,
                   timings: dict[str, float] | None = None) -> None:
    """The metrics table, the lifts, NDCG per user segment and candidate recall; with ``verbose`` also every
    other number of the run (users, iterations, parity) and the timings."""
    console.print(metrics_table(metrics, "test"))
    for line in lift_lines(metrics):
        console.print(f"  {line}")
    for table in (segments_table(metrics), candidates_table(metrics)):
        if table is not None:
            console.print(table)
    if "registry.model_version" in metrics:
        console.print(f"  registered version {metrics['registry.model_version']:.0f}")
    if not verbose:
        return
    from recops.steps import is_timing

    def detail(key: str) -> bool:
        if is_timing(key):
            return False  # in the timings table
        if key.startswith(("test.candidates.", "valid.candidates.")):
            return "recall@" not in key  # recall is in the candidates table
        return key.startswith(("export.parity.", "ranker.", "split.", "validation.")) or ".features." in key

    extra = {key: value for key, value in metrics.items() if detail(key)}
    for key, value in sorted(extra.items()):
        console.print(f"  {key} = {value:.6g}")
    table = timings_table(timings or {})
    if table is not None:
        console.print(table)


def number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def version_status(v: dict) -> str:
    """What happened to a version last: promoted (and on what), rolled back, or nothing."""
    promoted, rolled = v.get("promoted_at") or "", v.get("rolled_back_at") or ""
    if rolled and rolled >= promoted:
        return f"rolled back {rolled[:10]}"
    if promoted:
        how = {"first_model_gates": "gates", "ab_test": "A/B"}.get(v.get("promoted_on") or "", "")
        return f"promoted {promoted[:10]} {how}".strip()
    return ""


def print_backtest(report: dict, settings) -> None:
    cfg = report["config"]
    pooled = report["pooled"]["metrics"]
    metrics = ("ndcg@10", "recall@10", "recall@20", "map@10", "hitrate@10")
    table = Table(title=f"backtest: {len(report['windows'])} windows of {cfg['test_days']:g} days, pooled over "
                        f"{report['pooled']['rows']} (window, user) rows ({report['seconds']:.0f} s)",
                  title_justify="left")
    table.add_column("model")
    for metric in metrics:
        table.add_column(metric, justify="right")
    best = {m: max(values[m] for values in pooled.values()) for m in metrics}
    for name, values in pooled.items():
        table.add_row(name, *[f"[bold]{values[m]:.4f}[/]" if values[m] == best[m] else f"{values[m]:.4f}"
                              for m in metrics])
    console.print(table)
    print_backtest_lifts(report)
    run = f", MLflow run {report['mlflow_run_id']}" if report.get("mlflow_run_id") else ""
    console.print(f"reports: {settings.path('backtest_report')}, {settings.path('backtest_html')}{run}")


def print_backtest_lifts(report: dict) -> None:
    recall = report.get("candidate_recall") or {}
    if recall:
        console.print("  timeline candidate recall (mean over windows): " + ", ".join(
            f"{name} {value:.3f}" for name, value in recall.items()), highlight=False)
    level = f"{100 * report['config']['confidence']:.0f}%"
    for metric, lift in report["lift"].items():
        line = (f"{metric}: recops {lift['recops_value']:.4f} vs best peer {lift['best_peer']} "
                f"{lift['best_peer_value']:.4f} ({lift['lift_over_best_pct']:+.1f}%)")
        recent = lift["over"].get("recent_popularity")
        if recent:
            line += (f"; over recent popularity {recent['lift_pct']:+.1f}% ({level} CI {recent['low_pct']:+.1f}% "
                     f"to {recent['high_pct']:+.1f}%)")
        console.print(f"  timeline {line}", highlight=False)
