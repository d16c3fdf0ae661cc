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

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/ecgtune demo --workdir $(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest -m "not benchmark" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) -m pytest -m benchmark -s tests/benchmarks

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache
