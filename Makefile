# The README's two commands are `make run` and `make test`; both set up .venv on first use.
# OMP_NUM_THREADS defaults to 1 for run/test: emolens-tiny's ops are too small to gain from 2 threads,
# and on a busy 2-core machine thread spin-waits made notebooks 4-10x slower (measured).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU wheel by default (on disk here); a GPU user runs `make setup TORCH=torch` or installs a CUDA build first.
TORCH ?= torch==2.13.0
OUT ?= runs/notebooks

.PHONY: setup run test bench clean

$(BIN)/emolens: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[notebooks,dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(BIN)/emolens

setup: $(BIN)/emolens

run: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/emolens notebooks --out $(OUT)

test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg tests notebooks

bench: setup
	$(BIN)/emolens bench --json runs/bench.json

clean:
	rm -rf $(VENV) runs
