"""The ``recops`` command: one sub-command per user-facing action (what they print: :mod:`recops_cli.display`).

Errors a user can fix (RecopsError) print one clear message and exit 1, without a traceback; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from recops.entry import configure_logging, prepare_environment
from recops.errors import RecopsError

from recops_cli.display import (console, metrics_table, number, print_backtest, print_backtest_lifts, print_summary,
                                protocols_table, version_status)

app = typer.Typer(
    help="recops: a validated, evaluated, versioned two-stage recommender, from interaction logs to ONNX.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)

Params = Annotated[Path, typer.Option("--params", "-p", help="params.yaml of the project to run.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors in the log.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Also Prefect's own lines for every flow and task "
                                                               "run (begun, finished in state ...).")]


def _settings(params: Path, quiet: bool):
    prepare_environment(params.resolve().parent)
    configure_logging(logging.WARNING if quiet else logging.INFO)
    from recops.config import load_settings

    return load_settings(params)


def leave_no_orphans(settings, *, runs_flows: bool = False) -> None:
    """First thing a command that writes MLflow runs does: clean up after commands that were killed, and make
    sure this one cannot leave a process behind.

    Marks FAILED the MLflow runs a killed recops process left RUNNING (``recops.registry.orphans``); with
    ``runs_flows``, also stops temporary Prefect servers of killed commands and starts this command's own, which
    dies with it (``recops.orchestration``; nothing when ``PREFECT_API_URL`` is set).
    """
    from recops.registry.orphans import fail_orphaned_runs

    fail_orphaned_runs(settings)
    if runs_flows:
        from recops.orchestration import ensure_prefect_api

        ensure_prefect_api()


def tool(name: str) -> str:
    """How to type the project's ``name`` command (mlflow, prefect, dvc, recops) in a hint so it runs as shown:
    the bare name when this environment is the activated one (``VIRTUAL_ENV``; `make` puts the venv on its own
    PATH only, so PATH says nothing about the user's shell), else its path (relative to the current folder when
    inside it, e.g. ``.venv/bin/mlflow``)."""
    import os
    import sys

    own = Path(sys.executable).parent / name
    if not own.is_file():
        return name
    active = os.environ.get("VIRTUAL_ENV")
    if active and Path(active).resolve() == Path(sys.prefix).resolve():
        return name
    try:
        return str(own.relative_to(Path.cwd()))
    except ValueError:
        return str(own)


def _exit_on_user_error(exc: RecopsError) -> None:
    from rich.markup import escape

    from recops.redaction import redact

    err_console.print(f"[bold red]error:[/] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _with_settings(params: Path, quiet: bool, action):
    """(settings, action(settings)); a RecopsError ends the command with its message and exit code 1."""
    try:
        settings = _settings(params, quiet)
        return settings, action(settings)
    except RecopsError as exc:
        _exit_on_user_error(exc)
        raise  # unreachable: _exit_on_user_error raises


def _run_stages(params: Path, quiet: bool, names: list[str]) -> dict[str, float]:
    from recops import steps

    def run(settings) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name in names:
            metrics.update(steps.STAGES[name](settings))
        return metrics

    return _with_settings(params, quiet, run)[1]


class _DropUserErrorTraceback(logging.Filter):
    """Prefect logs a failed task with its traceback; for a RecopsError the message alone says what to fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RecopsError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_user_error_tracebacks() -> None:
    drop = _DropUserErrorTraceback()
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        logger.addFilter(drop)
        for handler in logger.handlers:
            handler.addFilter(drop)


def _prefect_terminal(quiet: bool, verbose: bool) -> None:
    """What a command that runs flows shows on the terminal, in this process and the ones its flows start (Dask
    workers): tracebacks of user errors never, Prefect's per-run lines ("Finished in state Completed()") only with
    ``verbose``, only warnings and errors with ``quiet``. The runs' logs on the server get every line either
    way."""
    from flows.reporting import hide_prefect_chatter, terminal_for_child_processes

    _quiet_user_error_tracebacks()
    terminal_for_child_processes(quiet, chatter=verbose)
    if quiet:  # Prefect's loggers are at INFO whatever the root's level, and recops' are in the flows (for the UI)
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
    if not verbose:
        hide_prefect_chatter()


@app.command()
def run(
    params: Params = Path("params.yaml"),
    engine: Annotated[str, typer.Option(
        help="prefect: the training flow (then dvc commit); dvc: dvc repro.")] = "prefect",
    push: Annotated[bool, typer.Option(help="dvc push the outputs to the default DVC remote after the run.")] = True,
    backtest: Annotated[bool | None, typer.Option(
        "--backtest/--no-backtest", help="Then judge the configuration on the rolling timeline too "
                                         "(default: backtest.with_run).")] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Run the whole pipeline (ingest .. register) and print the test metrics; then (backtest.with_run) the
    rolling-timeline backtest, both protocols side by side."""
    if engine not in ("prefect", "dvc"):
        _exit_on_user_error(RecopsError(f"--engine must be prefect or dvc, not {engine!r}"))
    settings = None
    try:
        settings = _settings(params, quiet)
        leave_no_orphans(settings, runs_flows=engine == "prefect")
        if engine == "dvc":
            _dvc_repro(settings.root, push)
        else:
            from flows.training import training_flow_for

            _prefect_terminal(quiet, verbose)
            training_flow_for(str(params.resolve()))(params_path=str(params.resolve()), push=push)
        from recops.steps import all_metrics
        from recops.workspace import read_json

        metrics = all_metrics(settings)
        registry = read_json(settings.path("registry_report"))
        metrics["registry.model_version"] = float(registry["model_version"])
    except RecopsError as exc:
        _exit_on_user_error(exc)
    print_summary(metrics)
    if backtest if backtest is not None else settings.backtest.with_run:
        try:
            from threadpoolctl import threadpool_limits

            from recops import steps

            with threadpool_limits(limits=settings.threads):
                report = steps.backtest_evidence(settings)  # the gates' (registry.first_model_gates.fold:
                # timeline) when they made one of this configuration and data
        except RecopsError as exc:  # the model is trained and registered: say why the timeline is missing
            err_console.print(f"[yellow]timeline backtest skipped:[/] {exc}", highlight=False, soft_wrap=True)
        else:
            console.print(protocols_table(metrics, report, settings.split.method))
            print_backtest_lifts(report)
    from recops.registry.mlflow_registry import experiment_page

    uri = settings.tracking_uri()
    ui = experiment_page(settings, registry["experiment_id"])  # opens on the runs, not on MLflow's GenAI view
    if not uri.startswith(("http://", "https://")):
        ui += (" after `make ui`" if settings.registry.tracking_uri is None
               else f" after `{tool('mlflow')} ui --backend-store-uri {uri}`")
    version = str(registry["model_version"])
    champion = registry.get("champion")
    if champion == version:
        then = "the first champion (it passed registry.first_model_gates)"
    elif champion is None:
        then = f"challenger; no champion: {registry.get('champion_note', 'run recops promote')}"
    else:
        then = f"challenger; champion is version {champion}: `recops ab` then `recops promote`"
    console.print(f"registered [bold]{registry['model_name']}[/] version {version} as {then} (MLflow: {ui})")


def _dvc_repro(root: Path, push: bool) -> None:
    import subprocess
    import sys

    for command in (["repro"], ["push", "--quiet"] if push else None):
        if command is None:
            continue
        proc = subprocess.run([sys.executable, "-m", "dvc", *command], cwd=root)
        if proc.returncode != 0:
            raise RecopsError(f"`dvc {' '.join(command)}` failed (exit {proc.returncode}); see the messages above")


@app.command()
def validate(params: Params = Path("params.yaml"), quiet: Quiet = False) -> None:
    """Ingest the configured data and check it with the Great Expectations suites in expectations/."""
    metrics = _run_stages(params, quiet, ["ingest", "validate"])
    console.print("[bold green]data is valid[/]: " + ", ".join(
        f"{k.removeprefix('validation.')}={v:g}" for k, v in sorted(metrics.items()) if k.startswith("validation.")))


@app.command()
def forget(
    user_ids: Annotated[list[str], typer.Argument(help="raw user ids, as the input data has them")],
    reason: Annotated[str | None, typer.Option(help="Why (kept in the audit record).")] = None,
    actor: Annotated[str | None, typer.Option(help="Who asks (default: $USER).")] = None,
    params: Params = Path("params.yaml"),
    push: Annotated[bool, typer.Option(help="dvc push the retrained outputs to the default DVC remote.")] = True,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Forget users everywhere recops keeps them: their rows, events and cached lists; retrain without them and
    promote the new version on the first-model gates; delete the earlier versions' user data and DVC's older data.
    Rerun the same command to finish a request that was interrupted."""
    from recops import forget as forgetting

    try:
        settings = _settings(params, quiet)
        leave_no_orphans(settings, runs_flows=True)
        request = forgetting.start(settings, user_ids, reason, actor)
        if not request["known"]:
            console.print(f"nothing to forget: no data recops keeps names the {request['users']} user id(s) given "
                          "(unknown users; nothing was changed)")
            return
        version = forgetting.retrained_version(request)
        if version is None:
            from flows.training import training_flow_for
            from recops.workspace import read_json

            _prefect_terminal(quiet, verbose)
            training_flow_for(str(params.resolve()))(params_path=str(params.resolve()), push=push)
            version = str(read_json(settings.path("registry_report"))["model_version"])
        else:
            console.print(f"forget {request['request_id']}: retrained as version {version} before it was "
                          "interrupted; finishing")
        audit = forgetting.finish(settings, request, version)
    except RecopsError as exc:
        _exit_on_user_error(exc)
    counts = audit["counts"]
    console.print(f"forgot {audit['users']} user(s) (request {audit['request_id']}): version {audit['new_version']} "
                  f"is the champion, retrained without them; removed {counts.get('source_rows', 0)} source rows, "
                  f"{counts.get('event_lines', 0)} event lines, {counts.get('cache_entries', 0)} cached lists, "
                  f"{counts.get('artifact_files', 0)} artifact files of versions "
                  f"{', '.join(audit['erased_versions']) or 'none'}, "
                  f"{max(counts.get('dvc_cache_objects', 0), 0)} DVC cache objects; audit record: "
                  f"{settings.paths.privacy_dir}/forget-{audit['request_id']}.json")


@app.command()
def pseudonym(user_ids: Annotated[list[str], typer.Argument(help="raw user ids, as the input data has them")],
              params: Params = Path("params.yaml"), quiet: Quiet = False) -> None:
    """Print the pseudonym each raw user id is kept as (privacy.pseudonymize), to join recops' outputs (batch
    scores, reports) back to your users; needs the key in privacy.key_env, and nothing maps pseudonyms back."""
    from recops.privacy import Pseudonymizer

    def show(settings) -> None:
        pseudo = Pseudonymizer.from_settings(settings)
        if pseudo is None:
            raise RecopsError("privacy.pseudonymize is off in params.yaml: recops keeps the raw user ids")
        for raw in user_ids:
            value = pseudo.one(raw)
            if value is None:
                raise RecopsError(f"{raw!r} is not a {settings.data.id_type} id (data.id_type)")
            typer.echo(f"{raw}\t{value}")

    _with_settings(params, quiet, show)


@app.command()
def evaluate(params: Params = Path("params.yaml"), quiet: Quiet = False) -> None:
    """Evaluate the baselines and the two-stage ranker on the test split (needs a trained ranker); print the table."""
    metrics = _run_stages(params, quiet, ["evaluate"])
    console.print(metrics_table(metrics, "test"))


@app.command()
def export(params: Params = Path("params.yaml"), quiet: Quiet = False) -> None:
    """Export the trained ranker to ONNX and check parity with native LightGBM."""
    metrics = _run_stages(params, quiet, ["export"])
    for key, value in sorted(metrics.items()):
        console.print(f"  {key} = {value:.6g}")


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="ingest, validate, split, candidates, features, train_ranker, "
                                             "evaluate, export, bundle or register.")],
    params: Params = Path("params.yaml"),
    quiet: Quiet = False,
) -> None:
    """Run one pipeline stage by name (what the DVC stage runs)."""
    from recops.steps import STAGES

    if name not in STAGES:
        _exit_on_user_error(RecopsError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}"))
    metrics = _run_stages(params, quiet, [name])
    console.print_json(json.dumps(metrics))


@app.command()
def metrics(params: Params = Path("params.yaml"),
            split: Annotated[str, typer.Option(help="test or valid")] = "test",
            verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also every other number of the run "
                                                                          "and the timings of each stage.")]
            = False) -> None:
    """Print the metrics table of the last run (`dvc metrics show` prints the headline files)."""
    from recops.steps import all_metrics, all_timings

    try:
        settings = _settings(params, quiet=True)
        values = all_metrics(settings)
        if not values:
            raise RecopsError(f"no metrics under {settings.path('reports_dir')}: run `recops run` first")
    except RecopsError as exc:
        _exit_on_user_error(exc)
    if split == "test":
        print_summary(values, verbose, all_timings(settings))
        backtest = settings.path("backtest_report")
        if backtest.is_file():  # the timeline of the last `recops backtest` (or `recops run`), side by side
            report = json.loads(backtest.read_text(encoding="utf-8"))
            console.print(protocols_table(values, report, settings.split.method))
            print_backtest_lifts(report)
    else:
        console.print(metrics_table(values, split))


@app.command()
def ab(
    params: Params = Path("params.yaml"),
    champion: Annotated[str, typer.Option(help="Alias or version number of the control model.")] = "champion",
    challenger: Annotated[str, typer.Option(help="Alias or version number of the candidate model.")] = "challenger",
    timeline: Annotated[bool | None, typer.Option(
        "--timeline/--no-timeline", help="Also refit both configurations on the rolling timeline (the backtest's "
                                         "windows) and ship only if the challenger is better there too "
                                         "(default: ab.timeline).")] = None,
    allow_other_data: Annotated[bool, typer.Option(
        "--allow-other-data", help="Compare versions trained on different data sources (refused otherwise).")]
    = False,
    quiet: Quiet = False,
) -> None:
    """A/B-evaluate the challenger against the champion on the current data snapshot: reports/ab.json and ab.html."""
    from recops.evaluation.abtest import run_ab

    def run(settings):
        from recops import steps

        leave_no_orphans(settings)
        summary = run_ab(settings, champion, challenger, timeline=timeline, allow_other_data=allow_other_data)
        summary["off_policy"] = steps.off_policy_section(settings, summary["challenger_version"])
        return summary

    settings, summary = _with_settings(params, quiet, run)
    colour = "green" if summary["decision"] == "ship" else "yellow"
    console.print(f"[bold {colour}]{summary['decision'].upper()}[/]: version {summary['challenger_version']} "
                  f"(challenger) vs {summary['champion_version']} (champion) on {summary['n_users']} users")
    table = Table(show_header=False)
    rows = [(summary["primary_metric"], f"{summary['mean_a']:.4f} -> {summary['mean_b']:.4f}"),
            ("delta [CI]", f"{summary['delta']:+.4f} [{summary['ci_low']:+.4f}, {summary['ci_high']:+.4f}]"),
            ("p-value", f"{summary['p_value']:.3g}"), ("minimum detectable delta", f"{summary['mde']:.4f}")]
    between = summary.get("online_metric") or {}
    if between.get("ci_width_ratio") is not None:  # CUPED on (ab.cuped) and the covariate varied
        rows.append(("between arms [CI]",
                     f"{between['delta']:+.4f} [{between['ci_low']:+.4f}, {between['ci_high']:+.4f}]"))
        rows.append((f"with CUPED on {between['covariate']}",
                     f"{between['delta_cuped']:+.4f} [{between['ci_low_cuped']:+.4f}, "
                     f"{between['ci_high_cuped']:+.4f}], CI width x {between['ci_width_ratio']:.3f}"))
    off = summary.get("off_policy")
    if off:  # evidence from the impression log, beside the decision
        snips = off["snips"]
        rows.append(("off-policy clicks/list (SNIPS)",
                     f"served {off['served_clicks_per_list']:.4f} -> {snips['estimate']:.4f} [{snips['ci_low']:.4f}, "
                     f"{snips['ci_high']:.4f}], ESS {snips['ess']:.0f} of {off['lists']} lists"
                     + (", poor support" if snips["poor_support"] else "")))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for reason in summary["reasons"]:
        console.print(f"  - {reason}", highlight=False)
    console.print(f"report: {settings.path('ab_html')} (and {settings.path('ab_report').name})")


@app.command()
def promote(
    params: Params = Path("params.yaml"),
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the challenger alias).")] = None,
    report: Annotated[Path | None, typer.Option(help="A/B report (default: paths.ab_report, reports/ab.json).")] = None,
    reason: Annotated[str | None, typer.Option(help="Why, recorded in the promotion history.")] = None,
    quiet: Quiet = False,
) -> None:
    """Move the champion alias to the challenger, only on a `ship` A/B decision for exactly that pair.

    The report must be the one `recops ab` logged on the challenger's MLflow run (same sha256): an edited file
    is refused. The first model (no champion yet) is promoted when it passes registry.first_model_gates instead.
    """
    from recops.registry import promote as promote_version

    def run(settings):
        leave_no_orphans(settings)
        path = report or settings.path("ab_report")
        return promote_version(settings, ab_report=path, version=version, reason=reason,
                               gates=settings.registry.first_model_gates)

    _, entry = _with_settings(params, quiet, run)
    console.print(f"[bold green]champion[/] -> version {entry['to_version']} of {entry['model_name']} "
                  f"(was {entry['from_version'] or 'none'}; on {entry['promoted_on']})")


@app.command()
def rollback(
    params: Params = Path("params.yaml"),
    reason: Annotated[str | None, typer.Option(help="Why, recorded in the promotion history.")] = None,
    quiet: Quiet = False,
) -> None:
    """Point the champion alias back at the previous champion."""
    from recops.registry import rollback as rollback_champion

    _, entry = _with_settings(params, quiet, lambda s: rollback_champion(s, reason=reason))
    console.print(f"[bold yellow]champion[/] -> version {entry['to_version']} (rolled back from "
                  f"{entry['from_version']})")


@app.command()
def models(
    params: Params = Path("params.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Every field of every version, as JSON.")] = False,
) -> None:
    """List the registered versions with their aliases, lineage, headline metrics and promotion record."""
    from recops.registry import list_models

    settings, versions = _with_settings(params, True, list_models)
    if as_json:
        print(json.dumps(versions, indent=1, default=str))
        return
    from rich import box

    table = Table(title=f"{settings.registry.model_name}: {len(versions)} versions", title_justify="left",
                  box=box.SIMPLE, pad_edge=False)
    for column in ("version", "aliases", "created", "commit", "params", "data md5", "ndcg@10 test", "timeline",
                   "status"):
        table.add_column(column, no_wrap=True)
    for v in versions:
        lineage, metrics = v.get("lineage", {}), v.get("metrics", {})
        aliases = [f"{a} (moved outside recops)" if a == "champion" and v.get("alias_warning") else a
                   for a in v.get("aliases", [])]
        table.add_row(str(v["version"]), " ".join(aliases), str(v.get("created_at", ""))[:10],
                      str(lineage.get("git_commit", ""))[:7], str(lineage.get("params_hash", ""))[:8],
                      str(lineage.get("data_md5.interactions", ""))[:8],
                      number(metrics.get("test.ranker.ndcg@10")), number(metrics.get("timeline.ranker.ndcg@10")),
                      version_status(v))
    # a terminal's width, or enough for every column when the output goes to a file or a pipe
    wide = Console(width=max(console.width, 160)) if not console.is_terminal else console
    wide.print(table)
    from rich.markup import escape

    for warning in (v["alias_warning"] for v in versions if v.get("alias_warning")):
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


@app.command()
def tune(
    params: Params = Path("params.yaml"),
    budget: Annotated[float | None, typer.Option(
        help="Seconds for the whole search (default: tuning.time_budget_s).")] = None,
    write: Annotated[bool, typer.Option(help="Write the best values into params.yaml (comments kept).")] = False,
    quiet: Quiet = False,
) -> None:
    """Tune the candidate sources and the ranker on the validation fold (Optuna, MLflow nested runs)."""
    from recops import steps
    from recops.tuning import tune as run_tuning

    try:
        settings = _settings(params, quiet)
        leave_no_orphans(settings)
        for name in ("ingest", "validate", "split"):
            steps.STAGES[name](settings)
        report = run_tuning(settings, budget_s=budget, write=write, params_path=params.resolve())
    except RecopsError as exc:
        _exit_on_user_error(exc)
        return
    table = Table(title=f"tuning on the valid fold ({report['seconds']:.0f} s)", title_justify="left")
    for column in ("search", "trials", "valid ndcg@10", "best values"):
        table.add_column(column)
    searches = {**{f"source {k}": v for k, v in report["sources"].items()},
                **({"ranker": report["ranker"]} if report["ranker"] else {})}
    for name, result in searches.items():
        table.add_row(name, str(len(result["trials"])), f"{result['valid_ndcg@10']:.4f}",
                      ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in result["best"].items()))
    console.print(table)
    if write:
        changed = report.get("changed") or {}
        if changed:
            console.print(f"{len(changed)} value(s) changed in {report['written_to']} ("
                          + ", ".join(f"{key}: {old} -> {new}" for key, (old, new) in changed.items())
                          + "); `recops run` (or `dvc repro`) uses them")
        else:
            console.print(f"the best values found are the ones {report['written_to']} already holds: nothing "
                          "changed")
    else:
        console.print("not written (use --write to put them into params.yaml)")


@app.command()
def backtest(
    params: Params = Path("params.yaml"),
    windows: Annotated[int | None, typer.Option(help="Number of windows (default: backtest.windows).")] = None,
    test_days: Annotated[float | None, typer.Option(help="Days judged after each cut.")] = None,
    valid_days: Annotated[float | None, typer.Option(help="Days before each cut for tuning / early stopping.")] = None,
    step_days: Annotated[float | None, typer.Option(help="Days between cuts.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Refits of the stochastic models per window.")] = None,
    quick: Annotated[bool | None, typer.Option("--quick/--full-grids", help="2-3 grid points per peer.")] = None,
    engine: Annotated[str, typer.Option(help="prefect: the recops-backtest flow (windows as tasks, on Dask with "
                                             "compute.engine: dask); local: in this process.")] = "prefect",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Rolling-origin backtest on the global timeline: recops and every peer, fitted before each cut and judged
    after it; pooled metrics with bootstrap intervals -> reports/backtest.json, reports/backtest.html, MLflow."""
    from recops import steps
    from recops.evaluation.backtest import load, with_overrides

    if engine not in ("prefect", "local"):
        _exit_on_user_error(RecopsError(f"--engine must be prefect or local, not {engine!r}"))
    overrides = {"windows": windows, "test_days": test_days, "valid_days": valid_days, "step_days": step_days,
                 "seeds": seeds, "quick": quick}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    try:
        settings = with_overrides(_settings(params, quiet), **overrides)
        leave_no_orphans(settings, runs_flows=engine == "prefect")
        for name in ("ingest", "validate"):
            steps.STAGES[name](settings)
        load(settings)  # the window plan, checked before a flow starts or anything is fitted
        if engine == "prefect":
            from flows.backtest import backtest_flow_for

            _prefect_terminal(quiet, verbose)
            report = backtest_flow_for(str(params.resolve()))(params_path=str(params.resolve()),
                                                              overrides=overrides)
        else:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=settings.threads):
                report = steps.backtest_evidence(settings)  # the gates' (registry.first_model_gates.fold:
                # timeline) when they made one of this configuration and data
    except RecopsError as exc:
        _exit_on_user_error(exc)
        return
    print_backtest(report, settings)


@app.command("batch-score")
def batch_score(
    params: Params = Path("params.yaml"),
    version: Annotated[str, typer.Option(help="Alias or version number to score with.")] = "champion",
    k: Annotated[int | None, typer.Option(help="List length per user (default: deployments.batch_k).")] = None,
    cache: Annotated[bool | None, typer.Option(
        help="Also write the lists to the serving cache (default: when serving.cache.backend is redis).")] = None,
    quiet: Quiet = False,
) -> None:
    """Top-k of every user by a registered version (the champion by default) to reports/batch/*.parquet."""
    from recops.serving.batch import batch_score as run_batch

    _, manifest = _with_settings(params, quiet,
                                 lambda s: run_batch(s, version=version, k=k or s.deployments.batch_k, cache=cache))
    cached = manifest.get("cached")
    console.print(f"version {manifest['version']}: {manifest['users']} users x {manifest['k']} -> "
                  f"{manifest['file']} ({manifest['seconds']:.1f} s, {manifest['users_per_second']:.0f} users/s)"
                  + (f"; {cached['lists']} lists to the {cached['backend']} cache" if cached else ""))


@app.command()
def monitor(params: Params = Path("params.yaml"), quiet: Quiet = False) -> None:
    """Online metrics of what was served in the last monitoring.online_days days, per version and day: CTR@k,
    coverage, novelty, explored slots' CTR, cold-user share (impression log x event log) ->
    reports/monitoring/online.{json,html}."""
    from recops import steps

    settings, report = _with_settings(params, quiet, steps.online_metrics)
    table = Table(title=f"online metrics: {report['impressions']} lists served, {report['events']} events "
                        f"(clicks within {report['attribution_minutes']:g} min)", title_justify="left")
    ks = sorted(settings.monitoring.ks)
    columns = ["lists", "users", *(f"ctr@{k}" for k in ks), *(f"coverage@{k}" for k in ks), "explored_ctr",
               "fallback_share"]
    for name in ["version", "day", *columns]:
        table.add_column(name, justify="left" if name in ("version", "day") else "right")
    for row in report["rows"]:
        table.add_row(str(row["version"]), row["day"], *(str(int(row[c])) if c in ("lists", "users")
                                                          else number(row.get(c)) for c in columns))
    console.print(table if report["rows"] else "nothing was served in the window (serving.impressions off, "
                  "or no request yet)")
    console.print(f"report: {settings.paths.monitoring_dir}/online.html")


@app.command()
def drift(params: Params = Path("params.yaml"),
          version: Annotated[str, typer.Option(help="Alias or version whose training data is the reference.")]
          = "champion",
          quiet: Quiet = False) -> None:
    """The current snapshot against what the champion was trained on: interactions (popularity concentration,
    new items, cold users), the ranker's features, the champion's and the challenger's scores; and what the
    gate (monitoring.drift.action) does about it -> reports/monitoring/drift.{json,html}."""
    from recops import steps

    settings, out = _with_settings(params, quiet, lambda s: steps.drift(s, version))
    checks = out["report"]["checks"]
    table = Table(title=f"drift vs version {out['version']}: {out['current']}", title_justify="left")
    for name in ("check", "method", "statistic", "drifted"):
        table.add_column(name, justify="left" if name in ("check", "method") else "right")
    for check in sorted(checks, key=lambda c: (not c["drifted"], c["name"])):
        table.add_row(check["name"], check["method"], number(check["statistic"]), "yes" if check["drifted"] else "")
    console.print(table)
    for note in out["notes"]:
        console.print(f"note: {note}")
    decision = out["decision"]
    console.print(f"gate ({settings.monitoring.drift.action}): {decision['decision']} — "
                  + "; ".join(decision["reasons"]))
    console.print(f"report: {settings.paths.monitoring_dir}/drift.html")


@app.command()
def ope(params: Params = Path("params.yaml"),
        version: Annotated[str, typer.Option(help="Alias or version to evaluate on the served lists' log.")]
        = "challenger",
        quiet: Quiet = False) -> None:
    """Off-policy evaluation: the clicks per list a version would earn, estimated from the impression log of what
    was served (IPS, SNIPS, doubly robust; bootstrap CIs, effective sample size) -> reports/monitoring/ope.json."""
    from recops import steps

    settings, out = _with_settings(params, quiet, lambda s: steps.ope(s, version))
    table = Table(title=f"off-policy estimates on {out['lists']} served lists (clicks per list; served: "
                        f"{out['served_clicks_per_list']:.4f})", title_justify="left")
    for name in ("policy", "estimator", "estimate", "95% CI", "ESS", "support"):
        table.add_column(name, justify="left" if name in ("policy", "estimator", "support") else "right")
    for policy, estimates in ((f"version {out['target_version']}", out["target"]), ("served", out["served"])):
        for name, e in estimates.items():
            table.add_row(policy, name, f"{e['estimate']:.4f}", f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]",
                          f"{e['ess']:.0f}", "poor" if e["poor_support"] else "ok")
    console.print(table)
    if out["left_out_lists"]:
        console.print(f"note: {out['left_out_lists']} lists with an unknown propensity (Thompson) left out")


@app.command()
def serve(
    params: Params = Path("params.yaml"),
    version: Annotated[str, typer.Option(help="Alias (followed: hot swap when it moves) or version number.")]
    = "champion",
    host: Annotated[str | None, typer.Option(help="Bind address (default: serving.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serving.port).")] = None,
    bundle: Annotated[Path | None, typer.Option(
        help="Serve this local bundle folder (e.g. models/serving) instead of the registry's version.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes (default: serving.workers; null there: one per core).", min=1)] = None,
    quiet: Quiet = False,
) -> None:
    """The online API: GET /recommendations/{user_id}, POST /events, /health, /ready, /metrics, /docs."""
    import uvicorn

    from recops.serving.api import available_cores, create_app, run_workers

    settings = _with_settings(params, quiet, lambda s: None)[0]
    cfg = settings.serving
    n = workers or cfg.workers or available_cores()
    host, port = host or cfg.host, port or cfg.port

    def announce(model) -> None:
        console.print(f"serving {model.model_name} version {model.version} on http://{host}:{port} with {n} "
                      f"worker process{'es' if n > 1 else ''} (docs: /docs)")

    try:
        if n > 1:
            run_workers(settings, params, version, bundle, host, port, n,
                        logging.WARNING if quiet else logging.INFO, announce)
            return
        app_ = create_app(settings, version=version, bundle_dir=bundle)
    except RecopsError as exc:
        _exit_on_user_error(exc)
        return
    announce(app_.state.holder.current)
    uvicorn.run(app_, host=host, port=port, workers=1, log_level="warning", access_log=False)


@app.command()
def snapshot(
    path: Annotated[Path, typer.Argument(
        help="The new interaction snapshot (CSV or Parquet, the configured columns).")],
    params: Params = Path("params.yaml"),
    train: Annotated[bool, typer.Option(help="Train a challenger on it after validation.")] = True,
    promote: Annotated[bool, typer.Option(help="Then A/B it against the champion and promote on ship.")] = True,
    push: Annotated[bool, typer.Option(help="dvc push the outputs after training.")] = True,
) -> None:
    """Take a new interaction snapshot: validate it (a bad one is rolled back), train, A/B, promote."""
    settings = _settings(params, quiet=False)
    from flows.lifecycle import ingest_snapshot_flow

    try:
        leave_no_orphans(settings, runs_flows=True)
        out = ingest_snapshot_flow(snapshot_path=str(path.resolve()), params_path=str(params.resolve()),
                                   train=train, promote=promote, push=push)
    except RecopsError as exc:
        _exit_on_user_error(exc)
        return
    console.print(f"snapshot {path.name}: {int(out['snapshot'].get('ingest.rows', 0))} interactions accepted"
                  + (f"; champion: {(out.get('promotion') or {}).get('promotion')}" if promote and train else ""))


@app.command()
def replay(
    source: Annotated[Path, typer.Argument(help="An interaction log to replay (CSV or Parquet).")],
    weeks: Annotated[int, typer.Option(help="Number of weekly snapshots (the last weeks of the log).")] = 4,
    params: Params = Path("params.yaml"),
    push: Annotated[bool, typer.Option(help="dvc push after each training.")] = True,
) -> None:
    """Replay a log as growing weekly snapshots through the snapshot flow (validate, train, A/B, promote)."""
    settings = _settings(params, quiet=False)
    from flows.lifecycle import replay as run_replay

    try:
        leave_no_orphans(settings, runs_flows=True)
        results = run_replay(params.resolve(), source.resolve(), weeks, settings.data.columns.timestamp, push)
    except RecopsError as exc:
        _exit_on_user_error(exc)
        return
    for result in results:
        promotion = (result["promotion"] or {}).get("promotion")
        moved = f"champion -> {promotion['to_version']}" if promotion else "champion unchanged"
        console.print(f"{Path(result['snapshot']).name}: {result['rows']} interactions, {moved}")


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (created; an earlier synth output is replaced).")],
    rows: Annotated[int, typer.Option(help="Number of interactions.")] = 1_000_000,
    users: Annotated[int | None, typer.Option(help="Number of users (default: scales with --rows, 140k at 20M).")]
    = None,
    items: Annotated[int | None, typer.Option(help="Number of items (default: scales with --rows, 40k at 20M).")]
    = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same arguments write byte-identical files.")] = 42,
    quiet: Quiet = False,
) -> None:
    """Write a seeded synthetic interaction log (partitioned Parquet) with user and item tables, for scale tests."""
    import time

    from recops.data.synth import INTERACTIONS_DIR, ITEMS_FILE, MANIFEST, USERS_FILE, generate

    configure_logging(logging.WARNING if quiet else logging.INFO)
    started = time.perf_counter()
    try:
        manifest = generate(out_dir, rows, seed=seed, n_users=users, n_items=items)
    except RecopsError as exc:
        _exit_on_user_error(exc)
        return
    counts = manifest["rows"]
    parts = sum(1 for name in manifest["files"] if name.startswith(f"{INTERACTIONS_DIR}/"))
    base = out_dir.as_posix().rstrip("/")
    console.print(f"wrote {counts['interactions']:,} interactions ({counts['users']:,} users, {counts['items']:,} "
                  f"items, seed {seed}) in {time.perf_counter() - started:.1f} s:\n"
                  f"  {base}/{INTERACTIONS_DIR}/ ({parts} Parquet file{'s' if parts != 1 else ''})\n"
                  f"  {base}/{USERS_FILE}\n  {base}/{ITEMS_FILE}\n"
                  f"  {base}/{MANIFEST} (arguments, row counts, sha256 of every file)", highlight=False, soft_wrap=True)
    console.print("to use it, set in params.yaml (paths relative to the folder of params.yaml; the default "
                  "data.columns and *_attributes already fit):", highlight=False, soft_wrap=True)
    console.print(f"data:\n  source: file\n  interactions_path: {base}/{INTERACTIONS_DIR}\n"
                  f"  users_path: {base}/{USERS_FILE}\n  items_path: {base}/{ITEMS_FILE}",
                  highlight=False, markup=False, soft_wrap=True)


@app.command()
def deploy(params: Params = Path("params.yaml"),
           limit: Annotated[int | None, typer.Option(help="Flow runs executed at once.")] = None) -> None:
    """Register the scheduled deployments (training, evaluate-and-promote, batch-score, ingest-snapshot) and run
    them in this process until interrupted (Prefect serve; set PREFECT_API_URL to use `make server`)."""
    settings = _settings(params, quiet=False)
    from flows.deployments import serve_deployments

    serve_deployments(settings, str(params.resolve()), limit=limit)


@app.command()
def schedule(params: Params = Path("params.yaml"),
             cron: Annotated[str, typer.Option(help="Cron expression of the training runs.")] = "0 3 * * *") -> None:
    """Serve the training flow as a scheduled Prefect deployment (runs until interrupted)."""
    _settings(params, quiet=False)
    from flows.schedule import serve

    serve(str(params.resolve()), cron)
