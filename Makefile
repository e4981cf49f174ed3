# Two entry points a fresh machine needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# On a machine without torch, take the pinned CPU build (never let pip resolve a bare or newer torch).
TORCH_PIN ?= torch==2.13.0

.PHONY: setup setup-test demo test test-fast lint format bench clean

setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_PIN)"
	$(PIP) install --no-build-isolation setuptools wheel pybind11 ninja
	$(PIP) install --no-build-isolation -e .

setup-test:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_PIN)"
	$(PIP) install --no-build-isolation setuptools wheel pybind11 ninja
	$(PIP) install --no-build-isolation -e ".[test]"

demo: setup
	$(PYTHON) -m xlmrxl demo

test: setup-test
	$(PYTHON) -m pytest -q tests

lint:
	@$(PYTHON) -m ruff --version >/dev/null 2>&1 || $(PIP) install "ruff==0.17.6"
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

test-fast:
	$(PYTHON) -m pytest -q -x tests -m "not slow"

bench:
	$(PYTHON) -m benchmarks.run

clean:
	rm -rf build dist *.egg-info xlmrxl_kernels/_C*.so
