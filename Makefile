# Two entry points for a newcomer: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default (on local disk on our dev machines; a bare `torch` can pull a multi-GB
# CUDA build). On a GPU machine: make TORCH_SPEC=torch TORCH_INDEX=https://download.pytorch.org/whl/cu128 demo
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
WORKDIR ?= ecgtune-demo
PYTEST_ARGS ?=

# `make gpu-check` runs under this interpreter: on a GPU machine whose python3 already has a
# CUDA build of torch, `make gpu-check GPU_CHECK_PY=python3` skips building .venv.
GPU_CHECK_PY ?= $(PY)
GPU_CHECK_ARGS ?= --profile

.PHONY: demo test lint bench clean browser-deps postgres-deps gpu-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@# The four folders install as ecgtune.* (pyproject's package-dir); setuptools warns
	@# about that mapping in editable mode, which is what we want.
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[dev]'
	@# The editable install runs from .venv's own metadata; setuptools' build leftover in the
	@# repository is not needed and would be the one file a run leaves outside .venv.
	rm -rf ecgtune.egg-info
	touch $@

# Bytecode of the repository's packages goes into .venv, not beside the sources: everything
# the demo writes lives in $(WORKDIR) (and .venv).
demo: $(VENV)/.installed
	PYTHONPYCACHEPREFIX=$(abspath $(VENV))/pycache $(VENV)/bin/ecgtune demo --workdir $(WORKDIR)

test: $(VENV)/.installed browser-deps postgres-deps
	PYTHONSAFEPATH=1 $(PY) -m pytest -m "not benchmark" $(PYTEST_ARGS)

# Debian's Chromium + chromedriver for the MLflow UI browser test (never a downloaded browser
# build). Installed when missing and we are root with apt; otherwise that test is skipped.
browser-deps:
	@if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian chromium + chromium-driver for the browser test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } || \
	    echo "could not install chromium: the browser test will be skipped"; \
	  else echo "chromium not installed: the browser test will be skipped"; fi; \
	fi

# Debian's PostgreSQL server for the tracking-server tests (tests/tracking: a throw-away
# cluster under the temp dir, never a system service). Installed when missing and we are root
# with apt; otherwise those tests are skipped.
postgres-deps:
	@if ! { ls /usr/lib/postgresql/*/bin/postgres || command -v postgres; } >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian postgresql for the tracking-server tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1; } || \
	    echo "could not install postgresql: the tracking-server tests will be skipped"; \
	  else echo "postgresql not installed: the tracking-server tests will be skipped"; fi; \
	fi

# mypy reads the four folders under their installed names (ecgtune.*) through a tree of
# symlinks: it cannot follow setuptools' editable finder. Packages and options: pyproject.toml.
TYPECHECK_DIR := build/typecheck
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	@mkdir -p $(TYPECHECK_DIR)/ecgtune
	@for p in data_prep components search ensembles; do \
	  ln -sfn ../../../$$p $(TYPECHECK_DIR)/ecgtune/$$p; done
	$(PY) -m mypy

bench: $(VENV)/.installed
	ECGTUNE_BENCH_OUT=bench-results PYTHONSAFEPATH=1 $(PY) -m pytest -m benchmark -s tests/benchmarks

# One table of what trials meet on this machine's GPU (README "GPU check"); on a CPU it runs
# the same checks with the tiny preset (the test suite does that too).
gpu-check: $(if $(filter $(PY),$(GPU_CHECK_PY)),$(VENV)/.installed)
	$(GPU_CHECK_PY) -m ecgtune.ensembles.gpu_check --json gpu-check.json $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis build \
	  test-artifacts ecgtune.egg-info gpu-check.json
