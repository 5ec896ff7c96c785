# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench bench-transfer lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/finetune.py --backbone resnet50 --classes 10

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# transferkit's default recipe against the peers' on real pretrained weights and real data (about 40 min
# on 2 cores); needs ../shared/fixtures and Debian's dataset-fashion-mnist
bench-transfer: $(STAMP)
	@test -d /usr/share/datasets/fashion-mnist || apt-get install -y dataset-fashion-mnist
	$(PY) benchmarks/bench_transfer.py --out benchmarks/RESULTS_transfer.md --json benchmarks/transfer_runs.json

lint: $(STAMP)
	$(VENV)/bin/ruff check transferkit tests scripts benchmarks
	$(VENV)/bin/ruff format --check transferkit tests scripts benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
