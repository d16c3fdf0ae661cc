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
# `make test` runs the suite in this many pytest-xdist workers (tests/conftest.py groups them);
# most tests use one thread, so the second core is otherwise idle.
TEST_WORKERS ?= 2
# Exact versions of everything else, so that `make demo` and `make test` give everyone the
# same environment (`make constraints` regenerates it; `make CONSTRAINTS= demo` installs the
# newest releases that pyproject.toml's ranges allow instead).
CONSTRAINTS ?= constraints.txt
# `make test-floors` builds this venv with every dependency at its pyproject.toml floor.
FLOORS_VENV ?= .venv-floors

# `make gpu-check` runs under this interpreter: on a GPU machine whose python3 already has a
# CUDA build of torch, `make gpu-check GPU_CHECK_PY=python3` skips building .venv.
GPU_CHECK_PY ?= $(PY)
GPU_CHECK_ARGS ?= --profile

.PHONY: demo test lint bench clean browser-deps postgres-deps gpu-check constraints \
	test-floors

$(VENV)/.installed: pyproject.toml $(wildcard $(CONSTRAINTS))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@# The four folders install as ecgtune.* (pyproject's package-dir); setuptools warns
	@# about that mapping in editable mode, which is what we want.
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[dev]' \
	  $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS))
	@# The editable install runs from .venv's own metadata; setuptools' build leftover in the
	@# repository is not needed and would be the one file a run leaves outside .venv.
	rm -rf ecgtune.egg-info
	touch $@

# Bytecode of the repository's packages goes into .venv, not beside the sources: everything
# the demo writes lives in $(WORKDIR) (and .venv).
demo: $(VENV)/.installed
	PYTHONPYCACHEPREFIX=$(abspath $(VENV))/pycache $(VENV)/bin/ecgtune demo --workdir $(WORKDIR)

test: $(VENV)/.installed browser-deps postgres-deps
	PYTHONSAFEPATH=1 $(PY) -m pytest -m "not benchmark" -n $(TEST_WORKERS) --dist loadgroup \
	  $(PYTEST_ARGS)

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

# constraints.txt: the newest releases that pyproject.toml's ranges allow, resolved together
# (pip's dry run, nothing installed) for every extra, torch excluded (TORCH_SPEC picks it).
# Run it after changing a range, then `make test` and `make test-floors`.
RESOLVE_VENV := build/resolve-venv
constraints:
	rm -rf $(RESOLVE_VENV)
	$(PYTHON) -m venv $(RESOLVE_VENV)
	$(RESOLVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(RESOLVE_VENV)/bin/python -m pip install --quiet --dry-run \
	  --ignore-installed --report build/pip-report.json "$(TORCH_SPEC)" \
	  '.[dev,cluster,tracking-server]'
	rm -rf ecgtune.egg-info $(RESOLVE_VENV)
	$(PYTHON) .ci/deps.py pins build/pip-report.json > constraints.txt

# Every dependency at its pyproject.toml floor (.ci/deps.py floors; requirements without a
# floor resolve as pip likes), in a fresh $(FLOORS_VENV): the fast tier, then a tiny search
# on synthetic records into a SQLite tracking store. CI runs it after `make test`.
FLOORS_PY := $(FLOORS_VENV)/bin/python
FLOORS_RUN := $(abspath $(FLOORS_VENV))/tiny-search
test-floors:
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_PY) -m pip install --quiet --upgrade pip
	$(FLOORS_PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(FLOORS_PY) .ci/deps.py floors pyproject.toml > $(FLOORS_VENV)/floors.txt
	PYTHONWARNINGS=ignore $(FLOORS_PY) -m pip install --quiet -e '.[dev]' \
	  --constraint $(FLOORS_VENV)/floors.txt
	rm -rf ecgtune.egg-info
	$(FLOORS_PY) -m pip freeze --exclude-editable | \
	  grep -iE '^(torch|ray|mlflow|optuna|sqlalchemy|wfdb|numpy|pandas|pyarrow|onnx[a-z]*)=='
	PYTHONSAFEPATH=1 $(FLOORS_PY) -m pytest -m "not slow and not benchmark" -q \
	  -n $(TEST_WORKERS) --dist loadgroup -p no:cacheprovider $(PYTEST_ARGS)
	mkdir -p $(FLOORS_RUN)
	$(FLOORS_VENV)/bin/ecgtune synth --output $(FLOORS_RUN)/records --n 300 --no-progress
	$(FLOORS_VENV)/bin/ecgtune prep --input $(FLOORS_RUN)/records --output $(FLOORS_RUN)/data \
	  --no-progress
	cd $(FLOORS_RUN) && $(abspath $(FLOORS_VENV))/bin/ecgtune search --data data --space tiny \
	  --name floors --num-samples 2 --epochs 1 --num-cpus 2 --verbose 0 \
	  --tracking-uri sqlite:///$(FLOORS_RUN)/mlflow.db --storage $(FLOORS_RUN)/ray_results
	$(FLOORS_PY) .ci/deps.py check-search sqlite:///$(FLOORS_RUN)/mlflow.db floors 2

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
	$(GPU_CHECK_PY) -m ecgtune.ensembles.cli.gpu_check --json gpu-check.json $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(FLOORS_VENV) $(WORKDIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis build \
	  test-artifacts ecgtune.egg-info gpu-check.json
