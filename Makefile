# Two entry points a fresh machine needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# On a machine without torch, take the pinned CPU build (never let pip resolve a bare or newer torch).
TORCH_PIN ?= torch==2.13.0

.PHONY: setup setup-test demo test test-fast test-clients client-venv lint format bench clean

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

# The client tests (COMET, sentence-transformers) need package versions the main environment cannot hold
# (unbabel-comet 2.2.7 pins transformers<5, protobuf<5, numpy<2), so they run in plain virtual environments built here
# (never --system-site-packages): .venv-clients (unbabel-comet + sentence-transformers 5.x on transformers 4.56.2) and
# .venv-st5 (sentence-transformers on the newest transformers 5.x), under CLIENT_VENVS_DIR (default: this checkout;
# .ci/run puts them in a cache directory so CI runs share them). Each is rebuilt only when its requirements file
# changed (the stamp is a copy of it). xlmrxl itself is not installed there: the tests import this checkout's code
# (PYTHONPATH), so one environment serves every checkout and is never stale.
CLIENT_VENVS_DIR ?= $(CURDIR)
CLIENT_ENVS := .venv-clients:tests/clients/requirements.txt .venv-st5:tests/clients/requirements-st5.txt

test-clients:
	@for pair in $(CLIENT_ENVS); do \
		$(MAKE) --no-print-directory client-venv VENV="$(CLIENT_VENVS_DIR)/$${pair%%:*}" REQ=$${pair#*:} || exit 1; \
	done
	@for pair in $(CLIENT_ENVS); do \
		echo "== tests/clients in $${pair%%:*}"; \
		PYTHONPATH="$(CURDIR)" "$(CLIENT_VENVS_DIR)/$${pair%%:*}/bin/python" -m pytest -q tests/clients || exit 1; \
	done

client-venv:
	@if cmp -s "$(REQ)" "$(VENV)/.stamp"; then echo "$(VENV): up to date with $(REQ)"; else \
		echo "$(VENV): building from $(REQ)" && rm -rf "$(VENV)" && $(PYTHON) -m venv "$(VENV)" && \
		"$(VENV)/bin/python" -m pip install -q "$(TORCH_PIN)" && \
		"$(VENV)/bin/python" -m pip install -q --no-build-isolation -r "$(REQ)" && \
		cp "$(REQ)" "$(VENV)/.stamp"; fi

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
