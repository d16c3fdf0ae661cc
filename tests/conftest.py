"""Session-wide fixtures: one synthetic database, its shards, and one tiny search, shared by
the search and ensembles suites so that each is built once per test run.

Markers tell the truth: a test whose fixtures start Ray or an MLflow server is marked `slow`
here, from its fixture closure, and a test outside the slow tier that starts either anyway
fails (`_no_ray_or_mlflow_server_in_the_fast_tier`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pytest
import torch

# `pytester` collects the suite in process for tests/test_markers.py (only a root conftest may
# name plugins).
pytest_plugins = ["pytester"]

# Two cores, shared with Ray's trial workers during the search tests: one intra-op thread per
# test process avoids OpenMP spin-waits fighting over them (2 threads ran ~10x slower here).
torch.set_num_threads(1)

# Subprocesses (the CLI, Ray workers) import the installed `ecgtune.*` packages, never the repo's
# folders by their bare names from the working directory (`python -m` would put it first).
os.environ["PYTHONSAFEPATH"] = "1"

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = (REPO.parent / "shared" / "data" / "ecg-arrhythmia-sample").resolve()
N_RECORDS = 1500

# Fixtures that start Ray (a search, a local multi-node cluster) or an MLflow server;
# `built_ensemble` needs `tiny_search`, so it is covered through the closure. Tests that call
# ray.init themselves carry the marker.
SLOW_FIXTURES = frozenset({"tiny_search", "mlflow_server", "ray_cluster"})
# Argument sequences that start a server from the MLflow CLI.
_MLFLOW_SERVERS = (("server",), ("ui",), ("models", "serve"))


# Under pytest-xdist (`make test`: two workers, `--dist loadgroup`) a session or module
# fixture is built once per worker that uses it. The scheduler below keeps each test module on
# one worker, and every module on the shared tiny search on the same one. Only the workers see
# the fixtures: each writes which modules use the search to a file the controller names.
SHARED_SEARCH_GROUP = "tiny_search"
_GROUPS_FILE = "ECGTUNE_TEST_GROUPS_FILE"


def _is_slow(item: pytest.Item) -> bool:
    return (item.get_closest_marker("slow") is not None
            or bool(SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))))


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if hasattr(config, "workerinput") and os.environ.get(_GROUPS_FILE):
        shared = sorted({_module(i.nodeid) for i in items
                         if "tiny_search" in getattr(i, "fixturenames", ())})
        target = Path(os.environ[_GROUPS_FILE])
        partial = target.with_name(f"{target.name}.{config.workerinput['workerid']}")
        partial.write_text(json.dumps(shared))
        partial.replace(target)  # both workers write the same list; a reader sees one whole
        # Modules are handed out in this order: the slow ones first, so that the last minutes
        # go to short modules and both workers finish together.
        items.sort(key=lambda item: not _is_slow(item))


def pytest_unconfigure(config: pytest.Config) -> None:
    if os.environ.get(_GROUPS_FILE) and not hasattr(config, "workerinput"):
        shutil.rmtree(Path(os.environ.pop(_GROUPS_FILE)).parent, ignore_errors=True)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndTheSharedSearch(LoadScopeScheduling):
        """One work unit per test module; the modules on the tiny search form one unit."""

        shared: frozenset[str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.shared is None:  # read once every worker has collected
                self.shared = frozenset(json.loads(Path(os.environ[_GROUPS_FILE]).read_text()))
            module = _module(nodeid)
            return SHARED_SEARCH_GROUP if module in self.shared else module

    return ModulesAndTheSharedSearch(config, log)


def _starts_mlflow_server(args: object) -> bool:
    argv = [str(a) for a in args] if isinstance(args, list | tuple) else str(args).split()
    names = [os.path.basename(a) for a in argv]
    if "mlflow" not in names:
        return False
    rest = tuple(argv[names.index("mlflow") + 1:])
    return any(rest[: len(cmd)] == cmd for cmd in _MLFLOW_SERVERS)


# A test that runs long (a search, a server, a browser; a session fixture it sets up first)
# would leave the console on its file's line, "[99%]", for minutes: every minute it gets a
# line naming it and what it is at. pytest captures the output of a running test, so the line
# goes to a copy of the console taken before any test ran.
LONG_TEST_LINE_S = 60.0
_console: list[TextIO] = []


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        # The workers inherit it; the scheduler reads what they write there.
        groups = Path(tempfile.mkdtemp(prefix="ecgtune-test-groups-")) / "groups.json"
        os.environ[_GROUPS_FILE] = str(groups)
    # An xdist worker's stdout is its channel to the controller; its stderr is the terminal's.
    stream = sys.stderr if hasattr(config, "workerinput") else sys.stdout
    try:
        _console.append(os.fdopen(os.dup(stream.fileno()), "w", buffering=1))
    except (AttributeError, OSError, ValueError):  # no real stdout (embedded runs)
        pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if not _console:
        yield
        return
    stop, start = threading.Event(), time.monotonic()

    def tell() -> None:
        while not stop.wait(LONG_TEST_LINE_S):
            what = getattr(item, "_ecgtune_phase", "running")
            try:
                _console[0].write(f"\n    ... {item.nodeid}: {what} "
                                  f"({time.monotonic() - start:.0f} s)\n")
            except (OSError, ValueError):
                return

    thread = threading.Thread(target=tell, name="long-test-line", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    slow = sorted((SLOW_FIXTURES | {"built_ensemble", "prepared_data", "synthetic_records"})
                  & set(getattr(item, "fixturenames", ())))
    item._ecgtune_phase = ("setting up " + ", ".join(slow) if slow  # type: ignore[attr-defined]
                           else "setting up")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    item._ecgtune_phase = "running"  # type: ignore[attr-defined]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    item._ecgtune_phase = "tearing down"  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _no_ray_or_mlflow_server_in_the_fast_tier(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    """Outside `slow`: Ray's sessions go to a private RAY_TMPDIR (inherited by subprocesses)
    that must still be empty afterwards, and starting an MLflow server raises at once."""
    if request.node.get_closest_marker("slow") or request.node.get_closest_marker("benchmark"):
        yield
        return
    ray_tmp = tmp_path_factory.mktemp("ray-tmp", numbered=True)
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    popen_init = subprocess.Popen.__init__

    def guarded_init(self: subprocess.Popen, args: object, *a: object, **kw: object) -> None:
        if _starts_mlflow_server(args):
            raise AssertionError(f"a test outside `slow` starts an MLflow server: {args}")
        popen_init(self, args, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_init)
    yield
    sessions = sorted(p.name for p in ray_tmp.glob("ray/session_*"))
    assert not sessions, f"a test outside `slow` started Ray ({sessions}): mark it slow"


@pytest.fixture(scope="session", autouse=True)
def _nothing_written_into_the_working_directory() -> Iterator[None]:
    """Tests write under tmp paths only: MLflow's default `./mlruns`, a stray `mlflow.db` or
    `ray_results/` in the folder pytest ran from fails the run, naming what appeared."""
    cwd = Path.cwd()
    watched = ("mlruns", "mlartifacts", "mlflow.db", "ray_results")
    before = {name for name in watched if (cwd / name).exists()}
    yield
    appeared = sorted(name for name in watched if (cwd / name).exists())
    new = [name for name in appeared if name not in before]
    assert not new, f"tests wrote {new} into {cwd}; write under tmp_path instead"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The 20 real records; tests that need them skip cleanly when the folder is absent."""
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"real sample records not found at {SAMPLE_DIR}")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory) -> Path:
    from ecgtune.data_prep import synthesize

    out = tmp_path_factory.mktemp("synthetic-records")
    synthesize(out, N_RECORDS, seed=0, workers=2)
    return out


@pytest.fixture(scope="session")
def prepared_data(synthetic_records, tmp_path_factory) -> Path:
    from ecgtune.data_prep import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(synthetic_records, out, workers=2, shard_size=500, progress=False)
    return out


@dataclass(frozen=True)
class TinySearch:
    result: object  # search.run.SearchResult
    storage: Path
    tracking_uri: str


@pytest.fixture(scope="session")
def tiny_search(prepared_data, tmp_path_factory) -> TinySearch:
    """A finished 4-trial search with the `tiny` space (local Ray, SQLite MLflow)."""
    from ecgtune.search.run import SearchOptions, run_search
    from ecgtune.search.tracking import default_tracking_uri

    root = tmp_path_factory.mktemp("tiny-search")
    uri = default_tracking_uri(root)
    result = run_search(SearchOptions(
        data=prepared_data, space="tiny", name="tiny", num_samples=4, tracking_uri=uri,
        storage=str(root / "ray_results"), num_cpus=2, max_concurrent=2, seed=0, verbose=0,
    ))
    return TinySearch(result, root / "ray_results", uri)

