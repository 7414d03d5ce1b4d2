"""Every HTML page recops writes or serves, opened in headless Chromium with the network cut off.

One small own-data project (the synthetic tables of tests/data, every stage run in this process, as the serving
unit tests do: ~30 s, where a MovieLens run would be minutes) gives each page its real producer: the validate
stage writes the Great Expectations Data Docs, evaluate the DVC plot files, two registered versions make
``recops ab`` write its report, a small backtest writes its page, ``dvc plots show`` the plots page, and
``recops serve`` answers ``/docs`` and ``/redoc``.

The browser may load ``file:``, ``data:`` and ``blob:`` addresses and the local server; every other request is
aborted and recorded. Each page must attempt none and show its key elements with a size (a script that never
loaded leaves them absent or empty). The checks are shown to fail on the same pages as they were before recops
made them offline: DVC's own CDN template, and the Data Docs with GX's CDN addresses put back.

Needs the Debian ``chromium`` package (``.ci/run`` installs it) and, for the DVC plots page and the Data Docs, the
copies ``make install`` fetches with npm; outside CI a machine without them skips what needs them with that
reason, in CI they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from recops import steps
from recops.config import load_settings
from recops.web_assets import VENDOR_DIR, load_manifest, missing_files
from tests.conftest import BIN, NO_GATES, replace_param, run_dvc, run_env, set_params
from tests.data.cases import PARAMS, write_clean_case

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("RECOPS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
SETTLE_MS = 400  # after "load": vega and bootstrap-table draw in the next frames


def chromium_or_skip() -> None:
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        return
    reason = f"chromium not found at {CHROMIUM}: apt-get install chromium (or set RECOPS_CHROMIUM to its path)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run installs it")
    pytest.skip(reason)


def offline_copies_or_skip() -> None:
    """The DVC plots page and the Data Docs need the copies `make install` fetches with npm."""
    missing = missing_files(load_manifest())
    if not missing:
        return
    reason = (f"{len(missing)} offline copies missing from {VENDOR_DIR} ({missing[0].target}, ...): run `make install` "
              f"(needs npm)")
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------- the browser
@dataclass
class OfflinePage:
    """A page as the browser showed it without a network: what it tried to fetch, and its script errors."""

    page: object  # playwright.sync_api.Page
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def visible(self, selector: str) -> list[dict]:
        """Bounding boxes of the elements matching ``selector`` that are displayed with a non-zero size."""
        loc = self.page.locator(selector)
        boxes = [loc.nth(i).bounding_box() for i in range(loc.count())]
        return [b for b in boxes if b and b["width"] > 0 and b["height"] > 0]

    def texts(self, selector: str) -> list[str]:
        return [t.strip() for t in self.page.locator(selector).all_inner_texts()]


@pytest.fixture(scope="module")
def browser():
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def open_offline(browser):
    """``open_offline(url)``: the page loaded with every request outside file:/data:/127.0.0.1 aborted."""
    contexts = []

    def open_page(url: str) -> OfflinePage:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        result = OfflinePage(page=None)

        def route(route) -> None:
            address = route.request.url
            if address.startswith(LOCAL_SCHEMES) or address.startswith(("http://127.0.0.1:", "http://localhost:")):
                route.continue_()
            else:
                result.blocked.append(address)
                route.abort("internetdisconnected")

        context.route("**/*", route)
        page = context.new_page()
        page.on("pageerror", lambda exc: result.errors.append(str(exc)))
        page.goto(url, wait_until="load", timeout=30_000)
        page.wait_for_timeout(SETTLE_MS)
        result.page = page
        return result

    yield open_page
    for context in contexts:
        context.close()


def drawn_pixels(offline: OfflinePage, selector: str) -> list[int]:
    """Per canvas matching ``selector``: how many pixels are neither transparent nor white (0: nothing drawn)."""
    return offline.page.eval_on_selector_all(selector, """canvases => canvases.map(c => {
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4)
            if (data[i + 3] > 0 && (data[i] < 250 || data[i + 1] < 250 || data[i + 2] < 250)) n++;
        return n;
    })""")


def loaded_images(offline: OfflinePage) -> list[int]:
    """naturalWidth of every <img> (0: not loaded)."""
    return offline.page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")


# ------------------------------------------------------------------------------------------------- the project
@pytest.fixture(scope="module")
def project(fresh_workspace):
    """A workspace with two registered versions, the A/B report, a backtest page and the DVC plots page."""
    chromium_or_skip()
    ws = fresh_workspace("browser")
    write_clean_case(ws)
    set_params(ws, **PARAMS)
    replace_param(ws, "registry.first_model_gates", NO_GATES)
    settings = load_settings(ws / "params.yaml")
    for stage in steps.STAGES.values():  # version 1: the champion (first-model gates)
        stage(settings)
    set_params(ws, ranker={"n_estimators": 5, "num_leaves": 4})
    settings = load_settings(ws / "params.yaml")
    for name in ("train_ranker", "evaluate", "export", "bundle", "register"):  # version 2: the challenger
        steps.STAGES[name](settings)

    from recops.evaluation.abtest import run_ab

    run_ab(settings, log_to_mlflow=False, timeline=False)
    set_params(ws, backtest={"windows": 2, "test_days": 30, "valid_days": 30, "quick": True, "seeds": 1,
                             "peers": ["popularity", "recent_popularity"], "bootstrap_resamples": 200,
                             "log_to_mlflow": False})
    steps.backtest(load_settings(ws / "params.yaml"))

    # the template .dvc/config names lives with the checkout's offline copies, which a workspace copy lacks
    template = ws / "recops" / "web_assets" / "vendor" / "dvc_plots.html"
    template.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(VENDOR_DIR / "dvc_plots.html", template)
    proc = run_dvc(ws, "plots", "show")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ws, settings


@pytest.fixture(scope="module")
def server(project):
    ws, _ = project
    port = free_port()
    log = open(ws / "serve.log", "w")
    proc = subprocess.Popen([str(BIN / "recops"), "serve", "--port", str(port), "--workers", "1", "-q"], cwd=ws,
                            env=run_env(ws), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (ws / "serve.log").read_text()[-3000:]
        time.sleep(0.3)
    yield base
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_the_offline_copies_are_installed_and_pinned():
    offline_copies_or_skip()
    assert (VENDOR_DIR / "dvc_plots.html").is_file()


# ---------------------------------------------------------------------------------------------------- the pages
def test_ab_report_shows_the_decision_and_both_versions_offline(project, open_offline):
    ws, _ = project
    offline = open_offline((ws / "reports" / "ab.html").as_uri())
    assert offline.blocked == [] and offline.errors == []
    decision = offline.texts(".decision")
    assert len(decision) == 1 and decision[0].lower() in ("ship", "hold") and offline.visible(".decision")
    title = offline.texts("h1")[0]
    assert "version 2 (challenger)" in title and "version 1 (champion)" in title
    compared = offline.texts("table:first-of-type tr td:first-child")
    assert {"champion", "challenger"} <= set(compared)
    images = loaded_images(offline)
    assert len(images) >= 2 and all(width > 0 for width in images) and len(offline.visible("img")) == len(images)


def test_backtest_report_shows_its_tables_and_figures_offline(project, open_offline):
    ws, settings = project
    offline = open_offline(settings.path("backtest_html").as_uri())
    assert offline.blocked == [] and offline.errors == []
    assert len(offline.visible("table tr td")) > 20
    models = {t.split("\n")[0] for t in offline.texts("table tr td:first-child")}
    assert {"recops", "popularity", "recent_popularity"} <= models
    images = loaded_images(offline)
    assert len(images) == 2 and all(width > 0 for width in images) and len(offline.visible("img")) == 2


def test_dvc_plots_page_draws_every_plot_offline(project, open_offline):
    offline_copies_or_skip()
    ws, _ = project
    offline = open_offline((ws / "dvc_plots" / "index.html").as_uri())
    assert offline.blocked == [] and offline.errors == []
    plots = offline.page.locator(".vega-embed").count()
    assert plots >= 3  # dvc.yaml's plots plus the evaluate stage's files
    assert len(offline.visible(".vega-embed canvas, .vega-embed svg.marks")) == plots
    drawn = drawn_pixels(offline, ".vega-embed canvas")
    assert len(drawn) == plots and all(n > 500 for n in drawn), drawn


def test_data_docs_show_the_validation_tables_and_icons_offline(project, open_offline):
    offline_copies_or_skip()
    ws, _ = project
    docs = ws / "reports" / "validation" / "data_docs"
    index = open_offline((docs / "index.html").as_uri())
    assert index.blocked == [] and index.errors == []
    # bootstrap-table draws the index tables from data in a script: one row per validated table
    assert len(index.visible("table tbody tr")) >= 3
    assert index.page.evaluate("document.fonts.check('900 16px \"Font Awesome 6 Free\"')")
    assert len(index.visible("i.fa-check-circle")) >= 3
    (result_page,) = docs.glob("validations/interactions/*/*/*.html")
    result = open_offline(result_page.as_uri())
    assert result.blocked == [] and result.errors == []
    assert len(result.visible("table tbody tr")) >= 10  # one row per expectation
    assert all(width > 0 for width in loaded_images(result))


def test_swagger_ui_lists_the_operations_offline(server, open_offline):
    offline = open_offline(f"{server}/docs")
    offline.page.wait_for_selector(".opblock", timeout=15_000)
    assert offline.blocked == [] and offline.errors == []
    paths = offline.texts(".opblock .opblock-summary-path")
    assert "/recommendations/{user_id}" in paths and "/events" in paths
    assert len(offline.visible(".opblock")) == len(paths)


def test_redoc_shows_every_operation_offline(server, open_offline):
    offline = open_offline(f"{server}/redoc")
    offline.page.wait_for_selector("h2", timeout=15_000)
    # ReDoc 2.x's footer logo comes from cdn.redoc.ly in the stock script: recops serves it without that address
    assert offline.blocked == [] and offline.errors == []
    # a schema ReDoc cannot resolve replaces the whole page with "Something went wrong..."
    assert "Something went wrong" not in offline.page.inner_text("body")
    headings = offline.texts("h2")
    assert "Top-k items for a user" in headings and "Record interactions and apply them to the served model" in headings
    assert len(offline.visible("h2")) == len(headings)


# ----------------------------------------------------------------------------- the checks catch a CDN page
def test_dvc_default_cdn_template_fails_the_offline_check(project, open_offline):
    """DVC's own template (what `dvc plots show` wrote before .dvc/config named recops' one) draws nothing."""
    from dvc_render.html import PAGE_HTML

    ws, _ = project
    template = ws / "cdn_template.html"
    template.write_text(PAGE_HTML)
    proc = run_dvc(ws, "plots", "show", "--html-template", str(template), "-o", "dvc_plots_cdn")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    offline = open_offline((ws / "dvc_plots_cdn" / "index.html").as_uri())
    assert any("vega" in address for address in offline.blocked)
    assert offline.visible(".vega-embed canvas, .vega-embed svg.marks") == []


def test_data_docs_with_gx_cdn_addresses_fail_the_offline_check(project, open_offline):
    """The index page as GX writes it (its CDN addresses put back): the tables stay empty, icons have no font."""
    ws, _ = project
    index = ws / "reports" / "validation" / "data_docs" / "index.html"
    html = index.read_text()
    for package in load_manifest():
        for asset in package.files:
            if asset.replaces:
                html = html.replace(f"static/vendor/{asset.target}", asset.replaces[0])
    cdn_page = index.with_name("index_cdn.html")
    cdn_page.write_text(html)
    offline = open_offline(cdn_page.as_uri())
    assert len(offline.blocked) >= 6
    assert offline.visible("table tbody tr") == []
