"""The run report (emolens.report) on real papermill runs of small probe notebooks: a failing notebook
shows its one-line error and links to its partial output; the sweep index has the grid table, the
figure and each point's pages; every linked file exists. (The page in a real browser: test_browser.py.)"""
import json
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup

from emolens import report
from emolens.runner import execute
from emolens.sweep import run_sweep

PROBE = """
import json, pathlib
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
fig, ax = plt.subplots(figsize=(2, 2)); ax.plot([0, 1], [0, x]); fig.savefig(pathlib.Path(out_dir, "line.png")); plt.close(fig)
assert x < 3, f"x={x} is too large"
pathlib.Path(out_dir, "results.json").write_text(json.dumps({"summary": {"x2": x * 2.0, "label": "ok"}}))
"""


def _probe(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# probe"),
                nbformat.v4.new_code_cell("x: int = 1  # slope\nout_dir: str = 'out'  # where results go",
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(PROBE)]
    path = folder / "00_probe.ipynb"
    nbformat.write(nb, path)
    return path


def _links(soup, root: Path):
    for tag, attr in (("a", "href"), ("img", "src")):
        for el in soup.find_all(tag):
            ref = el.get(attr)
            if ref and not ref.startswith(("#", "http")):
                yield root / ref


def test_index_shows_results_and_failures_with_partial_output(tmp_path):
    nb = _probe(tmp_path)
    out = tmp_path / "run"
    ok = execute(nb, out / "good", {"x": 2}, keep_going=True)
    bad = execute(nb, out / "bad", {"x": 5}, keep_going=True)
    assert ok["error"] is None
    assert bad["error"] == "In [3]: AssertionError: x=5 is too large", bad["error"]
    index = report.write_index(out, [ok, bad], params={"x": "2/5"})
    soup = BeautifulSoup(index.read_text(), "html.parser")

    rows = soup.select("table.results tbody tr")
    assert len(rows) == 2
    assert "x2" in rows[0].text and "4" in rows[0].text and "failed" not in rows[0].text
    assert "failed: In [3]: AssertionError: x=5 is too large" in rows[1].text and "failed" in rows[1]["class"]
    partial = rows[1].find("a", string="partial output")
    assert partial and (out / partial["href"]).is_file()
    export = BeautifulSoup((out / partial["href"]).read_text(), "html.parser")
    assert "AssertionError" in export.text  # nbconvert's page of the partial notebook shows the traceback
    imgs = soup.find_all("img")
    assert [Path(i["src"]).name for i in imgs] == ["line.png", "line.png"]  # the failed run drew before failing
    missing = [p for p in _links(soup, out) if not p.exists()]
    assert not missing, missing
    env = soup.select_one("table.environment").text
    assert "torch" in env and "papermill" in env and "device" in env
    runs = json.loads((out / "runs.json").read_text())
    assert [r["error"] for r in runs["records"]] == [None, bad["error"]]


def test_html_export_embeds_images(tmp_path):
    nb = _probe(tmp_path)
    rec = execute(nb, tmp_path / "r", {"x": 1})
    ran = nbformat.read(rec["executed"], as_version=4)
    ran.cells.append(nbformat.v4.new_code_cell("from IPython.display import Image\nImage(filename='r/line.png')"))
    from nbclient import NotebookClient  # execute the extra cell so an image output exists

    NotebookClient(ran, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(ran, tmp_path / "r" / "img.ipynb")
    page = BeautifulSoup(report.export_html(tmp_path / "r" / "img.ipynb").read_text(), "html.parser")
    srcs = [i["src"] for i in page.find_all("img")]
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_sweep_index_has_grid_table_figure_and_pages(tmp_path):
    nb = _probe(tmp_path)
    out = tmp_path / "sweep"
    run_sweep(str(nb), {"x": [1, 2]}, str(out))
    soup = BeautifulSoup((out / "index.html").read_text(), "html.parser")
    head = [th.text for th in soup.select("table.results thead th")]
    assert head[:2] == ["run", "x"] and "x2" in head and "seconds" in head
    rows = soup.select("table.results tbody tr")
    assert len(rows) == 2
    x2 = head.index("x2")
    assert [r.find_all("td")[x2].text for r in rows] == ["2", "4"]
    assert soup.find("img", src="sweep.png") and (out / "sweep.png").is_file()
    pages = [a["href"] for a in soup.select("table.results a") if a.text == "page"]
    assert len(pages) == 2 and all((out / p).is_file() and p.endswith(".html") for p in pages)
    assert not [p for p in _links(soup, out) if not p.exists()]
