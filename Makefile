# Two entry points a fresh machine needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# On a machine without torch, take the pinned CPU build (never let pip resolve a bare or newer torch).
TORCH_PIN ?= torch==2.13.0

.PHONY: setup setup-test demo test test-hf5 test-fast lint format bench clean

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

# The transformers-facing tests (every tests/test_*.py that mentions transformers) again on the newest transformers
# 5.x, in a plain venv (never --system-site-packages): the pinned torch first, then the package and
# tests/requirements-hf5.txt (the test extra with transformers replaced). Rebuilt only when that file, the torch pin
# or the Python changes (stamp keyed by their hash).
HF5_VENV ?= .venv-hf5
HF5_REQ := tests/requirements-hf5.txt
HF5_PY := $(HF5_VENV)/bin/python
HF5_KEY := $(shell { cat $(HF5_REQ); echo "$(TORCH_PIN)"; $(PYTHON) -VV; } | sha256sum | cut -c1-16)
HF5_STAMP := $(HF5_VENV)/.stamp-$(HF5_KEY)
HF5_TESTS ?= $(shell grep -l transformers tests/test_*.py)

$(HF5_STAMP):
	rm -rf $(HF5_VENV)
	$(PYTHON) -m venv $(HF5_VENV)
	echo "$(TORCH_PIN)" > $(HF5_VENV)/constraints.txt
	$(HF5_PY) -m pip install -c $(HF5_VENV)/constraints.txt "$(TORCH_PIN)" setuptools wheel pybind11 ninja
	$(HF5_PY) -m pip install --no-build-isolation -c $(HF5_VENV)/constraints.txt -r $(HF5_REQ) -e .
	touch $@

test-hf5: $(HF5_STAMP)
	$(HF5_PY) -c "import transformers, torch; print('test-hf5: transformers', transformers.__version__, 'torch', torch.__version__)"
	$(HF5_PY) -m pytest -q $(HF5_TESTS)

test-fast:
	$(PYTHON) -m pytest -q -x tests -m "not slow"

bench:
	$(PYTHON) -m benchmarks.run

clean:
	rm -rf build dist *.egg-info xlmrxl_kernels/_C*.so
