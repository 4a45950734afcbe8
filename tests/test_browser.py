"""JupyterLab and the run report in a real browser.

* `make lab` starts JupyterLab on 127.0.0.1 with token auth and the venv's kernel (no browser needed;
  runs in `make test`).
* With Debian's chromium driven by Playwright (`make test-browser`, marked ``browser``): the NTS explorer
  (notebook 01) and the SEPM explorer (notebook 04) run in JupyterLab, a control is moved, the rendered
  output must change; the report of a small `emolens notebooks --only 00` run renders its table and every
  figure. Screenshots go to runs/browser/. Every server is stopped by the test, also on failure.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "runs" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# Small parameters: the explorers' notebooks run in the browser in about a minute each.
SMALL = {
    "01_nts": {"n_samples": 8, "n_eval": 8, "p_v_grid": [0.03, 0.25, 1.0], "deletion_p_v": [0.25], "n_random": 1},
    "04_sepm": {"n_samples": 8, "n_eval": 8, "alphas": [0.0, 0.1, 0.2], "betas": [0.0, 0.2, 0.4],
                "table2_betas": [0.2], "fig4_betas": [0.2]},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


@contextmanager
def make_lab(*extra: str, root: str = "notebooks", timeout: float = 90):
    """`make lab` on a free port with a fresh token (plus ``extra`` server options, serving ``root``);
    yields (base url, token).

    The server runs in its own process group, which is terminated on exit, also when the body fails.
    ``-o .venv/bin/emolens``: the venv these tests run in is the setup, make must not rebuild it.
    """
    port, token = _free_port(), secrets.token_hex(16)
    args = " ".join([f"--port={port}", "--no-browser", f"--IdentityProvider.token={token}",
                     "--ServerApp.port_retries=0", *extra])
    log = open(SHOTS / f"lab-{port}.log", "w")
    proc = subprocess.Popen(["make", "--no-print-directory", "-o", ".venv/bin/emolens", "lab", f"LAB_DIR={root}", f"LAB_ARGS={args}"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`make lab` exited with {proc.returncode}: see {log.name}")
            try:
                if _get(f"{base}/api/status?token={token}", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() - t0 > timeout:
                raise TimeoutError(f"JupyterLab not reachable on {base} after {timeout} s: see {log.name}")
            time.sleep(0.5)
        yield base, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture(scope="module", autouse=True)
def _shots_dir():
    SHOTS.mkdir(parents=True, exist_ok=True)


def test_make_lab_serves_the_notebooks_on_localhost_with_a_token():
    with make_lab() as (base, token):
        assert base.startswith("http://127.0.0.1:")
        assert _get(f"{base}/api/status")[0] == 403, "the server must refuse requests without the token"
        status, body = _get(f"{base}/api/contents?token={token}")
        assert status == 200
        names = {c["name"] for c in json.loads(body)["content"]}
        assert {"01_nts.ipynb", "01_nts.py", "04_sepm.ipynb"} <= names, "make lab must open notebooks/"
        specs = json.loads(_get(f"{base}/api/kernelspecs?token={token}")[1])
        python = Path(specs["kernelspecs"]["python3"]["spec"]["argv"][0])
        # the project's venv, the one `make lab` runs (under `make test-latest` the tests run in .venv-latest)
        assert python.parent == Path(REPO) / ".venv" / "bin", f"kernel {python} is not the project venv's python"
        assert _get(f"{base}/lab?token={token}")[0] == 200
    with pytest.raises(OSError):  # stopped: the port no longer answers
        _get(f"{base}/api/status?token={token}", timeout=2)


# --------------------------------------------------------------------------------- in chromium

@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no {CHROMIUM}: run `make test-browser` (it installs Debian's chromium) or apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def lab_work():
    """`make lab` serving small-parameter copies of notebooks 01 and 04 up to their explorer cell
    (papermill parameterises them, outputs cleared)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from emolens.runner import NOTEBOOKS

    work = SHOTS / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for stem, params in SMALL.items():
        nb = load_notebook_node(str(NOTEBOOKS / f"{stem}.ipynb"))  # as papermill reads it (every cell has tags)
        # up to the explorer cell: the notebook's later checks and results are nbval's and test_notebooks' job
        last = max(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "explorer(" in c.source)
        nb.cells = nb.cells[:last + 1]
        for c in nb.cells:
            if c.cell_type == "code":
                c.outputs, c.execution_count = [], None
        nb = parameterize_notebook(nb, {**params, "out_dir": str(work / stem)})
        nbformat.write(nb, work / f"{stem}.ipynb")
    with make_lab("--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None", root=str(work)) as (base, token):
        yield base, token, work


RUN_ALL_AND_WAIT = """async () => {
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  await panel.context.sessionContext.ready;
  await app.commands.execute('notebook:run-all-cells');
  return true;
}"""

NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.model.cells;
  let running = 0, done = 0, errors = [];
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    const w = panel.content.widgets[i];
    if (w.promptNode && w.promptNode.textContent.includes('*')) running++;
    if (c.executionCount) done++;
    for (const o of c.outputs.toJSON()) if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
  }
  const status = panel.context.sessionContext.session?.kernel?.status;
  return {running, done, errors, status};
}"""


def _run_notebook(page, base, token, name, timeout=600):
    page.goto(f"{base}/lab/tree/{name}?token={token}")
    # the restored workspace may still show the previous notebook: wait until *this* one is current
    page.wait_for_function("(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget; "
                           "return w && w.context && w.context.path.endsWith(name); }", arg=name, timeout=120_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", state="attached", timeout=60_000)
    page.evaluate(RUN_ALL_AND_WAIT)
    t0 = time.time()
    retried = False
    while True:
        st = page.evaluate(NOTEBOOK_STATE)
        if not retried and st["done"] == 0 and st["running"] == 0 and time.time() - t0 > 30:
            page.evaluate(RUN_ALL_AND_WAIT)   # a Run All issued while the kernel was still connecting
            retried = True
        if st["errors"] or time.time() - t0 > timeout or (st["done"] == 0 and st["running"] == 0 and time.time() - t0 > 60):
            page.screenshot(path=str(SHOTS / f"{Path(name).stem}_failed.png"))
            assert not st["errors"], f"{name}: {st['errors']}"
            raise AssertionError(f"{name} did not run to the end in {time.time() - t0:.0f} s: {st}")
        if st["running"] == 0 and st["done"] > 0 and st["status"] == "idle":
            return st
        time.sleep(1)


def _explorer_output(widget):
    """What the explorer's Output area shows: its text and the figures' bytes."""
    out = widget.locator(".widget-output")
    return out.inner_text(), out.locator("img").evaluate_all("els => els.map(e => e.src)")


def _press_run(page, widget, before, timeout=180):
    widget.locator("button", has_text="Run").click()
    t0 = time.time()
    while True:
        now = _explorer_output(widget)
        if now != before and (now[0].strip() or now[1]):
            st = page.evaluate(NOTEBOOK_STATE)
            if st["status"] == "idle":
                return _explorer_output(widget)
        assert time.time() - t0 < timeout, "the explorer's output did not change after Run"
        time.sleep(0.5)


@pytest.mark.browser
@pytest.mark.parametrize("stem, control", [("01_nts", "p_v"), ("04_sepm", "beta")])
def test_explorer_runs_and_reacts_to_a_control(browser, lab_work, stem, control):
    base, token, work = lab_work
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _run_notebook(page, base, token, f"{stem}.ipynb")
        widget = page.locator(".widget-interact").first
        widget.scroll_into_view_if_needed()
        slider = widget.locator(".widget-slider, .widget-hslider").filter(has_text=control).first
        assert slider.is_visible(), f"{stem}: no {control} control rendered"
        readout = slider.locator(".widget-readout")
        first_value = readout.inner_text()

        first = _press_run(page, widget, _explorer_output(widget))
        assert first[1], f"{stem}: the explorer drew no figure"
        page.screenshot(path=str(SHOTS / f"{stem}_explorer_1.png"), full_page=False)

        slider.locator(".noUi-handle").first.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function("([el, v]) => el.textContent.trim() !== v",
                               arg=[readout.element_handle(), first_value], timeout=10_000)
        second_value = readout.inner_text()
        second = _press_run(page, widget, first)
        widget.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / f"{stem}_explorer_2.png"), full_page=False)
        assert second_value != first_value
        assert second != first, f"{stem}: moving {control} {first_value} -> {second_value} changed nothing"
        assert second[1] and second[1] != first[1], f"{stem}: the figure did not change with {control}"
    finally:
        page.close()


@pytest.fixture(scope="module")
def small_report():
    """`emolens notebooks --only 00` with small parameters, into runs/browser/report."""
    out = SHOTS / "report"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run([str(Path(sys.executable).with_name("emolens")), "notebooks", "--only", "00",
                        "-p", "n_samples", "12", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.mark.browser
def test_report_renders_its_table_and_every_figure(browser, small_report):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto((small_report / "index.html").as_uri())
        page.wait_for_load_state("load")
        table = page.locator("table.results")
        assert table.evaluate("t => t.tagName") == "TABLE"
        assert page.locator("table.results tbody tr").count() == 1
        row = page.locator("table.results tbody tr").first.inner_text()
        assert "00_world_model_token_usage" in row and "acc_full" in row, row
        assert "|---" not in page.content() and "![" not in page.inner_text("body")
        imgs = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        assert len(imgs) >= 3, imgs
        assert all(ok and w > 0 for _, ok, w in imgs), f"images that did not load: {[i for i in imgs if not i[2]]}"
        page.screenshot(path=str(SHOTS / "report_index.png"), full_page=True)

        page.locator("table.results a", has_text="page").first.click()
        page.wait_for_load_state("load")
        assert page.locator(".jp-Notebook .jp-Cell").count() > 5, "the nbconvert export did not render"
        exported = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
        assert exported and all(w > 0 for w in exported)
        assert all(s.startswith("data:image/") for s in page.evaluate("Array.from(document.images).map(i => i.src)"))
        page.screenshot(path=str(SHOTS / "report_notebook.png"), full_page=False)
    finally:
        page.close()
