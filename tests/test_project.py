"""The project's own plumbing: dependency lists agree, the README's commands are what CI runs."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch", "pysoundfile": "soundfile"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_packages_as_pyproject():
    import tomllib

    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pypi = {_name(r) for r in py["dependencies"]}
    for extra in py["optional-dependencies"].values():
        pypi |= {_name(r) for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = set()
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            n = _name(dep)
            if n not in ("python", "pip"):
                conda.add(CONDA_TO_PYPI.get(n, n))
        else:
            assert dep["pip"] == ["-e ."], "the only pip entry is the package itself"
    assert conda == pypi, f"only in pyproject: {sorted(pypi - conda)}; only in environment.yml: {sorted(conda - pypi)}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    cmds = [line.strip() for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]
    assert "make test" in cmds and "make run" in cmds, "README must give `make run` and `make test`"
    assert re.search(r"^make test$", ci, flags=re.M), ".ci/run must call exactly the README's test command"
