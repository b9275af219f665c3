"""The dashboard in a real browser: `memgauge dashboard` over a copy of the smoke store, every
page loaded in headless Chromium (Debian's, driven by Playwright), charts drawn, no error shown,
a screenshot of each page saved to test-artifacts/screenshots/<page>.png; and a run stored while
the dashboard runs shows after a reload."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from memgauge.results.report.export import CHROMIUM_FLAGS

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = list(CHROMIUM_FLAGS)  # the flags reports print with (this machine needs them)
# page url path -> does it draw a plotly chart over the smoke store
PAGES = {
    "overview": True,
    "explore": True,
    "breakdown": True,
    "scaling": True,
    "combinations": True,
    "estimate": True,
    "plan": False,
    "compare": False,
    "trends": True,
    "timeline": True,
}


# page url path -> texts its load over the smoke store must show (the page items' labels)
PAGE_TEXTS = {
    "breakdown": ("Which modules made what was alive at the peak", "The peak fell in the"),
    "timeline": (
        "Shaded: the step's phases",
        "Download this step as a Chrome trace",
        "--trace-out",
    ),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_store(smoke_store, tmp_path_factory) -> str:
    """A copy of the smoke store that the tests may write to while the dashboard reads it."""
    copy = tmp_path_factory.mktemp("live") / "live.sqlite"
    src, dst = sqlite3.connect(smoke_store[0]), sqlite3.connect(copy)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    return str(copy)


@pytest.fixture(scope="module")
def dashboard(live_store):
    if shutil.which("chromium") is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
        )
    pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    url = live_store
    port = _free_port()
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    log = open(ROOT / "test-artifacts" / "dashboard.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "memgauge", "--store", url, "dashboard", "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(
                f"the dashboard did not come up (exit {proc.poll()}); see "
                f"test-artifacts/dashboard.log"
            )
        time.sleep(0.5)
    yield base
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


DRAWN = """() => !document.querySelector('[data-testid="stStatusWidget"]')
    && !document.querySelector('[data-testid="stSkeleton"]')
    && [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
         .every(e => !e.checkVisibility() || e.querySelector('.main-svg'))
    && [...document.querySelectorAll('[data-testid="stDataFrame"]')]
         .every(e => !e.checkVisibility() || e.querySelector('canvas'))"""
# (what a collapsed expander hides is not drawn until it is opened)


def _wait_until_drawn(tab, timeout_s: float = 60.0) -> None:
    """Until the script run is over and every chart and table is drawn, twice in a row 0.4 s
    apart (the running indicator shows only after a moment, so one look is not enough)."""
    deadline = time.time() + timeout_s
    streak = 0
    while streak < 2:
        streak = streak + 1 if tab.evaluate(DRAWN) else 0
        if time.time() > deadline:
            pytest.fail("the page did not finish drawing")
        tab.wait_for_timeout(400)


@pytest.fixture(scope="module")
def tab(dashboard):
    """One browser tab for every page: loading each page by its URL, as a bookmark would."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        b.close()


def _wait_for_title(tab, title: str) -> None:
    tab.wait_for_function(
        "t => [...document.querySelectorAll('[data-testid=\"stMainBlockContainer\"] h1')]"
        ".some(h => h.innerText.trim().startsWith(t))", arg=title, timeout=60_000)  # fmt: skip


@pytest.mark.parametrize("page_name", list(PAGES))
def test_page_renders(dashboard, tab, page_name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    title = page_name.capitalize()
    # /overview is an alias of the default page at "/" (a bookmark must not say "Page not found")
    tab.goto(f"{dashboard}/{page_name}", wait_until="domcontentloaded", timeout=60_000)
    _wait_for_title(tab, title)
    if PAGES[page_name]:
        tab.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    _wait_until_drawn(tab)
    tab.wait_for_timeout(300)  # plotly's resize settles
    tab.screenshot(path=str(SHOTS / f"{page_name}.png"), full_page=True)
    assert tab.locator('[data-testid="stException"]').count() == 0
    body = tab.inner_text("body")
    assert "Traceback" not in body
    assert "Page not found" not in body
    if PAGES[page_name]:
        assert tab.locator(".js-plotly-plot").count() >= 1
    for text in PAGE_TEXTS.get(page_name, ()):
        assert text in body, (page_name, text)


def test_a_run_stored_while_the_dashboard_runs_shows_after_a_reload(dashboard, tab, live_store):
    """Stored after the dashboard has answered from its cache: a reload must show it (and,
    having baselines, open on it)."""
    from memgauge.results.store import Store
    from tests.app.synthetic import combination_run

    tab.goto(dashboard, wait_until="domcontentloaded", timeout=60_000)
    _wait_for_title(tab, "Overview")
    _wait_until_drawn(tab)
    assert "freshly-stored" not in tab.content()
    st = Store.open(live_store)
    combination_run(st, suite="freshly-stored")
    st.close()
    tab.reload(wait_until="domcontentloaded", timeout=60_000)
    _wait_for_title(tab, "Overview")
    tab.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    _wait_until_drawn(tab)
    tab.screenshot(path=str(SHOTS / "overview-after-a-new-run.png"), full_page=True)
    picked = tab.evaluate(
        "() => [...document.querySelectorAll('[data-testid=stSelectbox] input')].map(i => i.value)"
    )
    assert any(v.startswith("freshly-stored sweep · 10 cells") for v in picked), picked
