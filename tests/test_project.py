"""The project's own plumbing: dependency lists agree, the README's commands are what CI runs."""
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _lock_env():
    sys.path.insert(0, str(ROOT / "tools"))
    import lock_env

    return lock_env


def test_environment_yml_states_the_lock_versions_of_pyproject_packages():
    """environment.yml is exactly what tools/lock_env.py renders from pyproject + the lock: the same
    packages as pyproject (all extras), each at the lock's tested version."""
    lock_env = _lock_env()
    assert (ROOT / "environment.yml").read_text() == lock_env.render(), \
        "environment.yml is stale: run `python tools/lock_env.py` (make lock does)"


def test_lock_pins_every_dependency_within_pyproject_ranges():
    """Every direct dependency has an exact version in requirements.lock, inside pyproject's range."""
    from packaging.requirements import Requirement

    lock_env = _lock_env()
    lock = lock_env.lock_versions()
    for req in lock_env.direct_requirements():
        r = Requirement(req)
        n = lock_env.name(req)
        assert n in lock, f"{n} is in pyproject but not pinned in requirements.lock"
        assert r.specifier.contains(lock[n], prereleases=True), f"lock pins {n}=={lock[n]}, outside pyproject's {r.specifier}"
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        assert not line or re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", line), f"not an exact pin: {line!r}"


def test_setup_installs_from_the_lock():
    mk = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-c \$\(LOCK\)", mk), "make setup must install with the lock as constraints"
    assert "LOCK := requirements.lock" in mk


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    cmds = [line.strip() for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]
    assert "make test" in cmds and "make run" in cmds, "README must give `make run` and `make test`"
    assert re.search(r"^make test$", ci, flags=re.M), ".ci/run must call exactly the README's test command"
