# Two entry points a fresh machine needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# On a machine without torch, take the pinned CPU build (never let pip resolve a bare or newer torch).
TORCH_PIN ?= torch==2.13.0

.PHONY: setup setup-test demo test test-hf5 test-clients venv venv-locked test-fast lint format bench clean

setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_PIN)"
	$(PIP) install --no-build-isolation setuptools wheel pybind11 ninja
	$(PIP) install --no-build-isolation -e .

# Reinstall only when what the install depends on changed (pyproject, setup.py, the C++ sources, this checkout's
# path, the Python) or the compiled extension is gone: a rerun of `make test` starts the tests at once. The check
# imports xlmrxl isolated (-I: not from the current directory) so it sees what is installed, not this checkout.
SETUP_KEY = { cat pyproject.toml setup.py csrc/*; echo "$(CURDIR)"; $(PYTHON) -VV; } | sha256sum | cut -c1-16
SETUP_STAMP := build/.setup-test.stamp

setup-test:
	@if [ -f "$(SETUP_STAMP)" ] && [ "$$(cat $(SETUP_STAMP))" = "$$($(SETUP_KEY))" ] && ls xlmrxl_kernels/_C*.so >/dev/null 2>&1 \
		&& $(PYTHON) -I -c "import xlmrxl, os, sys; sys.exit(os.path.dirname(os.path.dirname(xlmrxl.__file__)) != '$(CURDIR)')"; then \
		echo "setup-test: installed and unchanged (delete $(SETUP_STAMP) to force)"; exit 0; fi; \
	{ $(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_PIN)"; } && \
	$(PIP) install --no-build-isolation setuptools wheel pybind11 ninja && \
	$(PIP) install --no-build-isolation -e ".[test]" && \
	mkdir -p build && $(SETUP_KEY) > "$(SETUP_STAMP)"

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

# Test environments that need package versions the main environment cannot hold: plain venvs (never
# --system-site-packages) under CLIENT_VENVS_DIR, by default a cache directory that every checkout and CI run on this
# machine shares (building one from nothing takes 10-20 minutes):
#   .venv-hf5      the transformers-facing tests again on the newest transformers 5.x (tests/requirements-hf5.txt,
#                  plus the project's own dependencies from pyproject.toml): `make test-hf5`
#   .venv-clients  unbabel-comet 2.2.7 + sentence-transformers 5.x on transformers 4.56.2 (comet pins transformers<5,
#                  protobuf<5, numpy<2; tests/clients/requirements.txt): `make test-clients`
#   .venv-st5      sentence-transformers 6.x on transformers 5.x (tests/clients/requirements-st5.txt): `make test-clients`
# xlmrxl itself is never installed there: the tests import this checkout's code (PYTHONPATH), with the compiled
# extension `make test` built in place (same torch pin, same Python), so one environment serves every checkout and
# is never stale. Each venv's .stamp holds what it was built from (its requirements, the torch pin, the Python); when
# that changes, the difference is installed into it (rebuilt from nothing when it is missing or its Python changed),
# under a lock, so concurrent runs never build the same venv twice.
CLIENT_VENVS_DIR ?= $(HOME)/.cache/xlmrxl/venvs
HF5_VENV := $(CLIENT_VENVS_DIR)/.venv-hf5
HF5_TESTS ?= $(shell grep -l transformers tests/test_*.py)
CLIENT_ENVS := .venv-clients:tests/clients/requirements.txt .venv-st5:tests/clients/requirements-st5.txt
CLIENT_CORPUS_TESTS ?= tests/test_corpus.py tests/test_corpus_owns.py tests/test_bench_corpus.py

test-hf5:
	@$(MAKE) --no-print-directory venv VENV="$(HF5_VENV)" REQ=tests/requirements-hf5.txt PROJECT_DEPS=1
	PYTHONPATH="$(CURDIR)" "$(HF5_VENV)/bin/python" -c "import transformers, torch; print('test-hf5: transformers', transformers.__version__, 'torch', torch.__version__)"
	PYTHONPATH="$(CURDIR)" "$(HF5_VENV)/bin/python" -m pytest -q $(HF5_TESTS)

test-clients:
	@for pair in $(CLIENT_ENVS); do \
		$(MAKE) --no-print-directory venv VENV="$(CLIENT_VENVS_DIR)/$${pair%%:*}" REQ=$${pair#*:} || exit 1; \
	done
	@for pair in $(CLIENT_ENVS); do \
		echo "== tests/clients in $(CLIENT_VENVS_DIR)/$${pair%%:*}"; \
		PYTHONPATH="$(CURDIR)" "$(CLIENT_VENVS_DIR)/$${pair%%:*}/bin/python" -m pytest -q tests/clients || exit 1; \
	done
	@echo "== corpus tests on pyarrow 21 / numpy 1.26 in $(CLIENT_VENVS_DIR)/.venv-clients"
	PYTHONPATH="$(CURDIR)" "$(CLIENT_VENVS_DIR)/.venv-clients/bin/python" -m pytest -q $(CLIENT_CORPUS_TESTS)

# `make venv VENV=<dir> REQ=<requirements file> [PROJECT_DEPS=1]`: build or update one of the venvs above.
venv:
	@mkdir -p "$(dir $(VENV))"
	@flock "$(VENV).lock" $(MAKE) --no-print-directory venv-locked VENV="$(VENV)" REQ="$(REQ)" PROJECT_DEPS="$(PROJECT_DEPS)"

VENV_PY = "$(VENV)/bin/python"
PROJECT_DEPS_CMD = $(PYTHON) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')"
VENV_REQS = { cat "$(REQ)"; $(if $(PROJECT_DEPS),$(PROJECT_DEPS_CMD);) }

venv-locked:
	@$(VENV_REQS) > "$(VENV).req" && \
	{ cat "$(VENV).req"; echo "$(TORCH_PIN)"; $(PYTHON) -VV; } > "$(VENV).want" && \
	if cmp -s "$(VENV).want" "$(VENV)/.stamp" && $(VENV_PY) -c "" 2>/dev/null; then \
		echo "$(VENV): up to date with $(REQ)"; rm -f "$(VENV).want" "$(VENV).req"; exit 0; fi; \
	if [ "$$($(VENV_PY) -VV 2>/dev/null)" = "$$($(PYTHON) -VV)" ]; then echo "$(VENV): updating to $(REQ)"; \
	else echo "$(VENV): building from $(REQ)" && rm -rf "$(VENV)" && $(PYTHON) -m venv "$(VENV)" || exit 1; fi; \
	rm -f "$(VENV)/.stamp" && echo "$(TORCH_PIN)" > "$(VENV).pin" && \
	$(VENV_PY) -m pip install -q -c "$(VENV).pin" "$(TORCH_PIN)" && \
	$(VENV_PY) -m pip install -q --no-build-isolation -c "$(VENV).pin" -r "$(VENV).req" && \
	mv "$(VENV).want" "$(VENV)/.stamp" && rm -f "$(VENV).req" "$(VENV).pin"

test-fast:
	$(PYTHON) -m pytest -q -x tests -m "not slow"

bench:
	$(PYTHON) -m benchmarks.run

clean:
	rm -rf build dist *.egg-info xlmrxl_kernels/_C*.so
