"""The markers tell the truth: what needs Ray or an MLflow server is `slow`, and the fast tier
is guarded against starting either (tests/conftest.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _collected(pytester: pytest.Pytester, *args: str) -> list[str]:
    """Node ids that `pytest --collect-only ARGS` selects in the repository. Collected in this
    process, whose imports are done: a `python -m pytest` child spent ~5 s importing them."""
    # Hypothesis's plugin only reports on runs: its import would be most of the cost.
    result = pytester.inline_run("--collect-only", "-p", "no:cacheprovider",
                                 "-p", "no:hypothesispytest", "--rootdir", str(REPO),
                                 "-c", str(REPO / "pyproject.toml"), *args)
    assert result.ret in (0, 5), result.ret  # 5: nothing collected
    [finished] = result.getcalls("pytest_collection_finish")
    return [item.nodeid for item in finished.session.items]


ENSEMBLE_BUILD = "tests/ensembles/test_ensemble_build.py"


@pytest.fixture
def imported_before_pytester() -> None:
    """What collecting ENSEMBLE_BUILD imports, imported before `pytester` snapshots
    sys.modules: it drops the modules first imported during the test, and an extension module
    (numpy.fft's) cannot be initialised twice in one process, so a later test would fail."""
    import importlib.util

    for relative in ("tests/ensembles/conftest.py", ENSEMBLE_BUILD):
        spec = importlib.util.spec_from_file_location(f"_imports_of_{Path(relative).stem}",
                                                      REPO / relative)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look themselves up there
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[spec.name]


def test_tests_on_the_tiny_search_leave_the_fast_tier(imported_before_pytester, pytester):
    path = ENSEMBLE_BUILD
    defined = re.findall(r"^def (test_\w+)", (REPO / path).read_text(), re.MULTILINE)
    fast = _collected(pytester, str(REPO / path), "-m", "not slow and not benchmark")
    assert len(defined) > 5, defined
    # Only the one test without `built_ensemble` stays in the fast tier.
    assert [t.split("::")[1] for t in fast] == ["test_seed_style_detection"]


def test_plain_pytest_never_runs_benchmarks(request):
    # addopts deselects them; a later `-m` (make bench: `-m benchmark`) replaces that filter.
    addopts = list(request.config.getini("addopts"))  # already split into arguments
    assert addopts[addopts.index("-m") + 1] == "not benchmark"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^bench:.*\n\t.*pytest -m benchmark ", makefile, re.MULTILINE)


@pytest.mark.parametrize("argv", [
    ["mlflow", "server", "--port", "0"],
    [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/x@y"],
    "mlflow ui --port 0",
])
def test_the_fast_tier_refuses_to_start_an_mlflow_server(argv):
    with pytest.raises(AssertionError, match="starts an MLflow server"):
        subprocess.Popen(argv)


def test_the_fast_tier_still_runs_other_subprocesses_and_isolates_ray():
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ['RAY_TMPDIR'])"],
                         capture_output=True, text=True, check=True)
    ray_tmp = Path(out.stdout.strip())
    assert ray_tmp == Path(os.environ["RAY_TMPDIR"]) and ray_tmp.is_dir()
    assert not any(ray_tmp.iterdir()), "a fresh, empty Ray temp dir for each fast test"
