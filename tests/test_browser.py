"""The course as a student meets it: JupyterLab in a real browser.

The notebook tests run the notebooks headless (papermill) and read back their numbers; nothing
there shows that a widget answers a click or that a circuitsvis view draws. These tests start a
JupyterLab server on 127.0.0.1 (a free port, a token, its own config and kernel folders), drive
headless Chromium against it with Playwright, and check what a student sees:

- notebook 00 at FAST size, Run All: typing an athlete into ``widgets.athlete_explorer`` changes its table;
- ``widgets.grid_explorer`` on the shipped grid: changing a dropdown changes the table, and no label is cut off;
- a circuitsvis attention view (``widgets.show_head``, ``widgets.head_explorer``) draws, labelled with the
  head's component name;
- the unlearning lab on the embedded model: Edit draws its curve and report, Revert says the model is restored;
- no request leaves the machine (every URL the page asks for is on 127.0.0.1 / localhost, or data: / blob:).

Each view is saved as a screenshot in the test's ``tmp_path`` and, when ``MECHUNLEARN_SCREENSHOTS=<dir>``
is set, copied there. The browser is Debian's ``/usr/bin/chromium`` when present, else Playwright's own
(``python -m playwright install chromium``); ``bash scripts/setup.sh`` installs one. Without a browser the
tests skip, except under CI (``CI`` set), where they fail and say how to install one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

# one JupyterLab server for the module: its tests stay on one test process (pytest-xdist, --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.xdist_group("browser")]

REPO = Path(__file__).resolve().parent.parent
GRID = REPO / "results" / "09_comparison_full"
KERNEL = {"name": "mechunlearn_nb", "display_name": "Python (mechunlearn_nb)", "language": "python"}
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
# Chromium's background services (updates, sync, field trials, QUIC probes) would otherwise call out
# to Google's servers; on a closed network they retry without end.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_HINT = ("Install a browser: `bash scripts/setup.sh` (as root with apt-get it installs Debian's chromium; "
                "elsewhere it runs `python -m playwright install chromium`).")
RUN_ALL_SECONDS = 1200  # notebook 00 at FAST size: model load and ~200 athletes scored, minutes on a busy CPU


def _unavailable(reason: str):
    """Skip on a workstation without a browser; fail under CI, where these tests must run."""
    message = f"{reason} {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    root: Path
    url: str
    token: str


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving a temporary folder, with the course's named kernel.

    Config, data and runtime folders are temporary too, so the user's settings and workspaces are
    neither read nor written; the kernel spec ``mechunlearn_nb`` runs this interpreter.
    """
    base = tmp_path_factory.mktemp("jupyterlab")
    root, conf, data = base / "notebooks", base / "config", base / "data"
    for d in (root, conf, data / "kernels" / KERNEL["name"]):
        d.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": KERNEL["display_name"], "language": "python"}
    (data / "kernels" / KERNEL["name"] / "kernel.json").write_text(json.dumps(spec))
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # no "get notified about Jupyter news?" toast over the views (and no news to fetch)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    (conf / "jupyter_server_config.py").write_text(
        "c.LabApp.news_url = None\n"  # no news feed, no update check: nothing to fetch from outside
        "c.LabApp.check_for_updates_class = 'jupyterlab.NeverCheckForUpdate'\n"
        "c.LabApp.expose_app_in_browser = True\n"  # the tests read the kernel's and cells' state from it
        f"c.LabApp.user_settings_dir = {str(base / 'settings')!r}\n"
        f"c.LabApp.workspaces_dir = {str(base / 'workspaces')!r}\n"
        "c.LanguageServerManager.autodetect = False\n")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(conf), JUPYTER_DATA_DIR=str(data),
               JUPYTER_RUNTIME_DIR=str(base / "runtime"), JUPYTER_PLATFORM_DIRS="1")
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    port, token = _free_port(), secrets.token_hex(16)
    log = (base / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start:\n{(base / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
    yield Lab(root, url, token)
    server.terminate()  # the server shuts its kernels down on the way out
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)
    log.close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """Headless Chromium (Debian's when installed, else Playwright's) with a fresh profile folder."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (`pip install -e '.[test]'`).")
    profile = tmp_path_factory.mktemp("chromium-profile")
    pw = sync_playwright().start()
    executable = str(DEBIAN_CHROMIUM) if DEBIAN_CHROMIUM.exists() else None
    try:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1600})
    except Error as err:
        pw.stop()
        _unavailable(f"No browser could be started ({str(err).splitlines()[0]}).")
    context.set_default_timeout(60_000)
    yield context
    context.close()
    pw.stop()


class Requests:
    """Every URL a page asks for, to check that none leaves the machine."""

    def __init__(self, page):
        self.urls: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))

    def outside(self) -> list[str]:
        def local(url: str) -> bool:
            parsed = urlparse(url)
            return parsed.scheme in ("data", "blob") or parsed.hostname in ("127.0.0.1", "localhost")

        return [u for u in self.urls if not local(u)]

    def assert_stayed_local(self):
        assert self.urls, "no request recorded: the page did not load from the server"
        assert not self.outside(), f"requests left the machine: {self.outside()[:10]}"


def _screenshot(locator, tmp_path: Path, name: str) -> Path:
    """Save a view's screenshot in ``tmp_path`` and, when MECHUNLEARN_SCREENSHOTS is set, copy it there."""
    path = tmp_path / f"{name}.png"
    locator.screenshot(path=str(path))
    if os.environ.get("MECHUNLEARN_SCREENSHOTS"):
        keep = Path(os.environ["MECHUNLEARN_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, keep / path.name)
    return path


# the open notebook's state, read from the JupyterLab app (exposed by the server's config)
NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session
                 && panel.sessionContext.session.kernel;
  if (!kernel || !panel.content || !panel.content.model) return null;
  const cells = panel.content.model.cells;
  let pending = 0; const errors = [];
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    if (cell.executionCount === null) pending += 1;
    for (let j = 0; j < cell.outputs.length; j++) {
      const out = cell.outputs.get(j).toJSON();
      if (out.output_type === 'error') errors.push(out.ename + ': ' + out.evalue);
    }
  }
  return {kernel: kernel.name, status: kernel.status, pending: pending, errors: errors};
}"""


def _open_and_run_all(page, lab: Lab, name: str):
    """Open a notebook in a reset workspace, wait for its kernel, Run All (from the Run menu), wait until done."""
    page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
    page.wait_for_function(f"({NOTEBOOK_STATE})() && ({NOTEBOOK_STATE})().status === 'idle'", timeout=120_000)
    assert page.evaluate(NOTEBOOK_STATE)["kernel"] == KERNEL["name"]
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
    deadline = time.monotonic() + RUN_ALL_SECONDS
    while True:
        state = page.evaluate(NOTEBOOK_STATE)
        assert not state["errors"], f"{name}: a cell failed in the browser: {state['errors']}"
        if state["pending"] == 0 and state["status"] == "idle":
            return
        assert time.monotonic() < deadline, f"{name}: Run All not done after {RUN_ALL_SECONDS} s ({state})"
        time.sleep(1)


def _write_notebook(path: Path, *sources: str) -> str:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = dict(KERNEL)
    nbformat.write(nb, path)
    return path.name


def _wait_for_change(page, locator, before: str, what: str):
    """Wait until a locator's text is no longer ``before`` (and not empty); return the new text."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = locator.inner_text()
        if text.strip() and text != before:
            return text
        time.sleep(0.5)
    raise AssertionError(f"{what} did not change within 120 s; it still reads:\n{before[:500]}")


def test_quickstart_athlete_explorer_answers_typing(browser_context, lab, tmp_path):
    """Notebook 00 (FAST) in JupyterLab: Run All, type another athlete, the explorer's table changes."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(REPO / "notebooks" / "00_quickstart.ipynb"))  # as papermill reads it
    nb = parameterize_notebook(nb, {"FAST": True, "OUTPUT_DIR": str(tmp_path / "00_quickstart")})
    nbformat.write(nb, lab.root / "00_quickstart.ipynb")
    page = browser_context.new_page()
    requests = Requests(page)
    _open_and_run_all(page, lab, "00_quickstart.ipynb")

    explorer = page.locator(".widget-vbox", has=page.locator(".widget-text input")).last
    explorer.scroll_into_view_if_needed()
    table = explorer.locator(".widget-output")
    before = table.inner_text()
    assert "basketball" in before, f"the explorer shows no sport table for its default athlete:\n{before[:500]}"
    box = explorer.locator(".widget-text input")
    box.fill("Tom Brady")
    box.press("Enter")
    after = _wait_for_change(page, table, before, "athlete_explorer's table after typing 'Tom Brady'")
    assert "fact" in after and "qa" in after, f"no sport table for 'Tom Brady':\n{after[:500]}"
    _screenshot(explorer, tmp_path, "00_athlete_explorer")
    requests.assert_stayed_local()
    page.close()


def test_grid_explorer_answers_a_dropdown(browser_context, lab, tmp_path):
    """The shipped grid in grid_explorer: another localization shows another table; labels are not cut off."""
    name = _write_notebook(lab.root / "grid_explorer.ipynb",
                           f"from mechunlearn_nb import widgets\nwidgets.grid_explorer({str(GRID)!r})")
    page = browser_context.new_page()
    requests = Requests(page)
    _open_and_run_all(page, lab, name)

    explorer = page.locator(".widget-vbox", has=page.locator(".widget-dropdown select")).last
    explorer.scroll_into_view_if_needed()
    labels = explorer.locator(".widget-label")
    for i in range(labels.count()):  # a label narrower than its text shows '...' instead of the end of it
        label = labels.nth(i)
        assert label.evaluate("e => e.scrollWidth <= e.clientWidth"), f"label {label.inner_text()!r} is cut off"
    assert "Localization:" in labels.all_inner_texts()
    table = explorer.locator(".widget-output")
    before = table.inner_text()
    assert "before" in before or "after" in before or len(before) > 100, f"no cell table shown:\n{before[:500]}"
    dropdown = explorer.locator(".widget-dropdown", has_text="Localization:").locator("select")
    options = dropdown.locator("option").all_inner_texts()
    assert len(options) > 1, f"the shipped grid offers one localization only: {options}"
    dropdown.select_option(label=options[1])
    _wait_for_change(page, table, before, f"grid_explorer's table after choosing {options[1]!r}")
    _screenshot(explorer, tmp_path, "09_grid_explorer")
    requests.assert_stayed_local()
    page.close()


def test_circuitsvis_views_name_their_heads(browser_context, lab, tmp_path):
    """show_head draws a circuitsvis view labelled 'a1.h2'; head_explorer redraws it for another head."""
    prompt = "Fact: Tiger Woods plays the sport of golf\\nFact: Magic Johnson plays the sport of"
    name = _write_notebook(
        lab.root / "heads.ipynb",
        "from mechunlearn_nb import models, widgets\nmodel = models.tiny_model(seed=0)",
        f"widgets.show_head(model, '{prompt}', 1, 2)",
        f"widgets.head_explorer(model, {{'Magic Johnson': '{prompt}'}}, default_layer=1, default_head=2)")
    page = browser_context.new_page()
    requests = Requests(page)
    _open_and_run_all(page, lab, name)

    view = page.locator("[id^='circuits-vis-']").first
    view.scroll_into_view_if_needed()
    page.wait_for_function("e => e.childElementCount > 0 && e.innerText.includes('a1.h2')",
                           arg=view.element_handle(), timeout=60_000)
    text = view.inner_text()
    assert "Head 0" not in text, f"the view labels its head 'Head 0' instead of its name:\n{text[:300]}"
    assert view.bounding_box()["height"] > 50
    _screenshot(view, tmp_path, "show_head")

    explorer = page.locator(".widget-vbox", has=page.locator(".widget-dropdown select")).last
    explorer.scroll_into_view_if_needed()
    explorer.locator(".widget-dropdown", has_text="Head:").locator("select").select_option(label="3")
    redrawn = explorer.locator("[id^='circuits-vis-']")
    page.wait_for_function("e => e.childElementCount > 0 && e.innerText.includes('a1.h3')",
                           arg=redrawn.element_handle(timeout=60_000), timeout=60_000)
    _screenshot(explorer, tmp_path, "head_explorer")
    requests.assert_stayed_local()
    page.close()


def test_run_report_opens_offline_and_says_where_widgets_live(browser_context, lab, tmp_path):
    """A run's report.html and a rendered notebook, opened in the browser: they load nothing from outside
    (no CDN for the widget manager or MathJax) and say plainly that the explorers are live only in JupyterLab."""
    from mechunlearn_nb import runner
    from mechunlearn_nb.report import WIDGET_NOTE

    books = tmp_path / "notebooks"
    books.mkdir()
    nb = new_notebook(cells=[new_code_cell("FAST = False\nOUTPUT_DIR = 'out'\nMODEL_NAME = None"),
                             new_code_cell("import ipywidgets as w\nfrom IPython.display import Markdown\n"
                                           "from mechunlearn_nb import io\nio.write_metrics(io.output_dir(OUTPUT_DIR), {'x': 1})\n"
                                           "display(Markdown('An equation: $e^{i\\\\pi} + 1 = 0$'))\n"
                                           "w.VBox([w.Text(value='LeBron James')])")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, books / "00_widget.ipynb")
    run = runner.run_series(lab.root / "runs", fast=True, notebook_dir=books)
    rel = run.relative_to(lab.root).as_posix()
    for page_name, shows in (("report.html", "live only in JupyterLab"), ("00_widget.html", WIDGET_NOTE)):
        page = browser_context.new_page()
        requests = Requests(page)
        page.goto(f"{lab.url}/files/{rel}/{page_name}?token={lab.token}")
        page.wait_for_load_state("networkidle")
        assert shows in page.locator("body").inner_text()
        _screenshot(page.locator("body"), tmp_path, f"report-{Path(page_name).stem}")
        requests.assert_stayed_local()
        page.close()


def _wait_for_text(locator, text: str, what: str, seconds: float = 600) -> str:
    """Wait until a locator's text contains ``text``; return the whole text."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = locator.inner_text()
        if text in now:
            return now
        time.sleep(0.5)
    raise AssertionError(f"{what}: {text!r} did not appear within {seconds:.0f} s; it reads:\n{locator.inner_text()[:800]}")


def test_unlearning_lab_edits_and_reverts(browser_context, lab, tmp_path):
    """The unlearning lab on the embedded model: Edit draws the curve and the report, Revert says 'restored'."""
    name = _write_notebook(
        lab.root / "unlearning_lab.ipynb",
        "from mechunlearn_nb import models, widgets\nmodel = models.load_model()",
        "widgets.unlearning_lab(model, steps=2, n_maintain=8, n_neighbours=4, n_related=4, n_paragraphs=1)")
    page = browser_context.new_page()
    requests = Requests(page)
    _open_and_run_all(page, lab, name)

    widget = page.locator(".widget-vbox", has=page.locator("button", has_text="Revert")).last
    widget.scroll_into_view_if_needed()
    status = widget.locator(".widget-html").first
    assert "press Edit" in status.inner_text()
    widget.locator("button", has_text="Edit").click()
    _wait_for_text(status, "Edit applied", "the lab's status after Edit")
    curve, report = widget.locator(".widget-output").nth(0), widget.locator(".widget-output").nth(1)
    assert curve.locator("img").count() == 1, "no live curve drawn after Edit"
    table = report.inner_text()
    assert "forget" in table and "general_text" in table and "before" in table, f"no report:\n{table[:800]}"
    _screenshot(widget, tmp_path, "04_unlearning_lab_edit")
    widget.locator("button", has_text="Revert").click()
    text = _wait_for_text(status, "restored", "the lab's status after Revert")
    assert "bit for bit" in text
    _screenshot(widget, tmp_path, "04_unlearning_lab_revert")
    requests.assert_stayed_local()
    page.close()
