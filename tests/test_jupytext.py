"""The committed notebooks as text: every NN_topic.ipynb is in sync with its jupytext pair NN_topic.py,
and carries no execution noise (papermill records, timestamps, widget state, random widget ids outside
`# NBVAL_IGNORE_OUTPUT` cells) that nbval's sanitizer would not catch. The checks themselves are shown
to fail on a pair edited on one side and on a notebook fresh out of papermill."""
import shutil
from pathlib import Path

import jupytext
import nbformat
import pytest

from emolens.runner import NOTEBOOKS, clean_notebook, notebook_noise, notebook_paths, pair_problems

NBS = notebook_paths()


def test_jupytext_config_pairs_ipynb_with_percent_scripts():
    cfg = jupytext.config.load_jupytext_configuration_file(str(NOTEBOOKS / "jupytext.toml"))
    assert list(cfg.formats) == ["ipynb,py:percent"]
    assert sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py")) == [p.stem for p in NBS]


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_pair_in_sync(path):
    problems = pair_problems(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_no_execution_noise(path):
    problems = notebook_noise(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name} (run `emolens notebooks --refresh`, which cleans): " + "; ".join(problems)


@pytest.fixture
def pair(tmp_path):
    """A copy of notebook 01's pair in a temp folder."""
    for suffix in (".ipynb", ".py"):
        shutil.copy(NOTEBOOKS / f"01_nts{suffix}", tmp_path / f"01_nts{suffix}")
    return tmp_path / "01_nts.ipynb", tmp_path / "01_nts.py"


def test_sync_check_reports_a_script_edited_alone(pair):
    ipynb, py = pair
    assert pair_problems(ipynb) == []
    text = py.read_text()
    assert "p_v: float = 0.03" in text
    py.write_text(text.replace("p_v: float = 0.03", "p_v: float = 0.05", 1))
    problems = pair_problems(ipynb)
    assert len(problems) == 1 and "source differs" in problems[0] and "p_v: float = 0.03" in problems[0], problems


def test_sync_check_reports_a_notebook_edited_alone(pair):
    ipynb, py = pair
    nb = nbformat.read(ipynb, as_version=4)
    nb.cells.insert(3, nbformat.v4.new_markdown_cell("A note written in JupyterLab only."))
    nb.cells[1].metadata["tags"] = []  # the parameters tag lost on this side only
    nbformat.write(nb, ipynb)
    problems = pair_problems(ipynb)
    assert any("cells" in p and "01_nts.py" in p for p in problems), problems
    assert any("cell 1: tags differ" in p for p in problems), problems


def test_sync_check_accepts_what_jupytext_sync_writes(pair):
    """After an edit on one side, `jupytext --sync` (its Python API here) makes the check pass again."""
    ipynb, py = pair
    py.write_text(py.read_text().replace("p_v: float = 0.03", "p_v: float = 0.05", 1))
    nb = jupytext.read(py)
    old = nbformat.read(ipynb, as_version=4)
    nb = jupytext.combine.combine_inputs_with_outputs(nb, old, fmt="py:percent")
    jupytext.write(nb, ipynb)
    assert pair_problems(ipynb) == []


def test_fresh_papermill_run_is_noisy_and_clean_notebook_fixes_it(tmp_path):
    """A real papermill execution (the venv's kernel) of a notebook with a parameters cell, an explorer
    widget and a progress bar: the noise check flags what papermill/nbclient leave, clean_notebook removes
    the metadata, and only the widget/progress cells without # NBVAL_IGNORE_OUTPUT remain flagged."""
    import papermill as pm

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# probe"),
        nbformat.v4.new_code_cell("n: int = 2  # count", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("# NBVAL_IGNORE_OUTPUT\nfrom emolens.widgets import explorer\n"
                                  "explorer(lambda k=1: print(k * n), k=[1, 2, 3])"),
        nbformat.v4.new_code_cell("n * 3"),
        nbformat.v4.new_code_cell("from emolens.widgets import explorer\nexplorer(lambda k=1: k, k=[1, 2])"),
        nbformat.v4.new_code_cell("import sys\nsys.stderr.write('step 1/2\\rstep 2/2\\r')"),
    ]
    src, out = tmp_path / "probe.ipynb", tmp_path / "probe.out.ipynb"
    nbformat.write(nb, src)
    pm.execute_notebook(str(src), str(out), parameters={"n": 5}, kernel_name="python3", progress_bar=False)
    ran = nbformat.read(out, as_version=4)
    before = notebook_noise(ran)
    assert "notebook metadata 'papermill'" in before
    assert any("metadata 'papermill'" in p and p.startswith("cell") for p in before)
    assert any("metadata 'execution'" in p for p in before)
    assert any("injected-parameters" in p for p in before)

    after = notebook_noise(clean_notebook(ran))
    assert not any("metadata" in p or "injected" in p or "execution count" in p for p in after), after
    assert all(c.metadata.get("tags") != ["injected-parameters"] for c in ran.cells)
    # what cleaning cannot decide for the author: the unmarked widget cell and progress-bar cell
    assert sorted(p.split(":")[0] for p in after) == ["cell 4 (code)", "cell 5 (code)"], after
    assert "widget view" in after[0] and "progress-bar" in after[1]
    # the marked explorer cell rendered a real widget view (a random model id), and it is tolerated
    view = [o for o in ran.cells[2].outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert view and view[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert [c.execution_count for c in ran.cells if c.cell_type == "code"] == [1, 2, 3, 4, 5]
    assert ran.cells[3].outputs[0]["data"]["text/plain"] == "15"  # the injected n=5 reached the run


def _probe_pair(folder: Path, body: str) -> Path:
    """A two-cell notebook `00_probe` written as py:percent and paired by jupytext (as `make notebooks-sync`)."""
    py = folder / "00_probe.py"
    py.write_text('# %% [markdown]\n# # probe\n\n# %% tags=["parameters"]\nn: int = 2  # count\n\n# %%\n' + body + "\n")
    nb = jupytext.read(py)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    jupytext.write(nb, folder / "00_probe.ipynb")
    return folder / "00_probe.ipynb"


def test_refresh_executes_in_place_and_leaves_a_clean_synced_pair(tmp_path):
    from emolens.runner import refresh

    ipynb = _probe_pair(tmp_path, "n * 21")
    done = refresh(folder=tmp_path)
    assert [name for name, _ in done] == ["00_probe.ipynb"]
    nb = nbformat.read(ipynb, as_version=4)
    assert nb.cells[2].outputs[0]["data"]["text/plain"] == "42"
    assert notebook_noise(nb) == [] and pair_problems(ipynb) == []


def test_refresh_refuses_a_pair_out_of_sync(tmp_path):
    from emolens.runner import refresh

    ipynb = _probe_pair(tmp_path, "n * 21")
    py = ipynb.with_suffix(".py")
    py.write_text(py.read_text().replace("n * 21", "n * 22"))
    with pytest.raises(ValueError, match="source differs.*jupytext --sync"):
        refresh(folder=tmp_path)
    assert "outputs" not in nbformat.read(ipynb, as_version=4).cells[2] or not nbformat.read(ipynb, as_version=4).cells[2].outputs
