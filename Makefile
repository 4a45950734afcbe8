# The README's two commands are `make run` and `make test`; both set up .venv on first use.
# OMP_NUM_THREADS defaults to 1 for run/test: emolens-tiny's ops are too small to gain from 2 threads,
# and on a busy 2-core machine thread spin-waits made notebooks 4-10x slower (measured).
PY ?= python3
VENV := .venv
# Notebooks executed at once by run/notebooks: one per core of the 2-core reference machine.
JOBS ?= 2
BIN := $(VENV)/bin
# CPU wheel by default (on disk here); a GPU user runs `make setup TORCH=torch` or installs a CUDA build first.
TORCH ?= torch==2.13.0
# Every extra the notebooks, tests and cluster executors use. The versions come from the lock.
EXTRAS ?= notebooks,dev,lab,cluster
LOCK := requirements.lock
OUT ?= runs/notebooks
LATEST := .venv-latest
# -n $(JOBS) --dist loadfile: pytest-xdist workers, one per core; loadfile keeps each notebook (its cells run in
# one kernel, in order) and each test module on one worker.
PYTEST_ARGS := -q -n $(JOBS) --dist loadfile -m "not browser" --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg tests notebooks
# JupyterLab on notebooks/ (LAB_DIR) with the venv's python3 kernel; server options: LAB_ARGS="--port=8899 ...".
LAB_DIR ?= notebooks
LAB_ARGS ?=
CHROMIUM := /usr/bin/chromium

.PHONY: gpu-wheels gpu-check setup run test test-latest lock bench clean lab notebooks notebooks-sync test-browser

# Installs the exact tested versions: the lock is a pip constraints file (pyproject keeps ranges).
$(BIN)/emolens: pyproject.toml $(LOCK)
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$$(grep '^pip==' $(LOCK))"
	$(BIN)/python -m pip install -q -c $(LOCK) "$(TORCH)" -e ".[$(EXTRAS)]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(BIN)/emolens

setup: $(BIN)/emolens

run: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/emolens notebooks --jobs $(JOBS) --out $(OUT)

# CPU and float32 whatever the machine has, so the committed outputs compare on any machine.
test: setup
	CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest $(PYTEST_ARGS)

# Drift check: a throwaway venv with the newest versions pyproject allows (no lock), then the tests.
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager "$(TORCH)" -e ".[$(EXTRAS)]"
	$(LATEST)/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(LATEST)/bin/python -m pip list 2>/dev/null | grep -iE '^(transformers|torch|numpy|papermill) '
	CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(LATEST)/bin/python -m pytest $(PYTEST_ARGS)

# After `make test-latest` passes: record its versions as the new lock.
lock:
	test -x $(LATEST)/bin/python || { echo "run make test-latest first (it builds $(LATEST))"; exit 2; }
	{ sed -n '1,3p' $(LOCK); echo "pip==$$($(LATEST)/bin/python -m pip --version | cut -d' ' -f2)"; \
	  $(LATEST)/bin/python -m pip freeze --exclude-editable | grep -viE '^(torch|emolens)[= ]'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	$(LATEST)/bin/python tools/lock_env.py

# Explore: JupyterLab on notebooks/ (localhost only, token auth), kernel = this venv's python3
# (--allow-root only when run as root, e.g. in a container).
lab: setup
	$(BIN)/jupyter lab --ServerApp.root_dir=$(LAB_DIR) --ServerApp.ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Refresh the committed outputs: papermill executes each notebook in place, then cleans it
# (NB=01 for one notebook). This is the only way committed outputs change; nbval checks them.
notebooks: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/emolens notebooks --jobs $(JOBS) --refresh $(if $(NB),--only $(NB))

# After editing one side of a pair outside JupyterLab: bring the other side up to date.
notebooks-sync: setup
	$(BIN)/jupytext --sync notebooks/[0-9][0-9]_*.py

# Widgets and the run report in a real browser: Debian's chromium driven by Playwright, screenshots in runs/browser/.
test-browser: setup
	test -x $(CHROMIUM) || { apt-get update && apt-get install -y chromium; }
	CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -m browser tests/test_browser.py

bench: setup
	$(BIN)/emolens bench --json runs/bench.json

clean:
	rm -rf $(VENV) $(LATEST) runs

# The GPU smoke test (tools/gpu_check.sh): gather the wheels the device machine lacks (here, with PyPI),
# then run it there with .gpu-wheels carried. make test runs its --quick CPU form (tests/test_gpu_check.py).
gpu-wheels:
	tools/gpu_check.sh --gather-wheels

gpu-check:
	tools/gpu_check.sh --device cuda

# Mutation testing of the equation functions of methods/ and metrics.py (issue 18): each mutant against its
# module's tests; prints the kill rate and every survivor, writes runs/mutation.json. Not in CI (~30-60 min).
.PHONY: mutation
mutation: setup
	CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 nice -n 10 $(BIN)/python tools/mutation.py --jobs 2 --json runs/mutation.json
