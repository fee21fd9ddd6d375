# make demo: the main job on the built-in default.  make lint: ruff and mypy.  make test: lint, then the test
# suite.  Each sets up .venv on first use.
SHELL := bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo lint test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull several GB of CUDA packages
	$(BIN)/pip install --quiet torch==2.13.0
	# pyproject.toml gives ranges; constraints.txt the exact versions this checkout is tested and measured with
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,onnx,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sparsesearch demo

# Static checks first (configured in pyproject.toml), each printing its wall time; the first failure stops make.
lint: $(STAMP)
	@TIMEFORMAT='ruff check: %R s'; time $(BIN)/ruff check .
	@TIMEFORMAT='ruff format --check: %R s'; time $(BIN)/ruff format --check .
	@TIMEFORMAT='mypy: %R s'; time $(BIN)/mypy

test: lint
	@TIMEFORMAT='pytest: %R s'; time TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_model.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
