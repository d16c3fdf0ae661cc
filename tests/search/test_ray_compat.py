"""search._ray_compat against the installed Ray: every internal it names exists and takes the
arguments we pass, so a Ray release that moves one fails here, with its name, instead of in a
search. None of these tests starts Ray."""

from __future__ import annotations

import importlib
import inspect
import json
import logging

import pyarrow.fs
import pytest
import ray
from packaging.version import Version
from ray import tune
from ray.tune.experiment import Trial

from ecgtune.search import _ray_compat, ray_session
from ecgtune.search import metric_keys as K
from ecgtune.search.checkpoint import checkpoint_config
from ecgtune.search.errors import SearchError
from ecgtune.search.faults import install_no_retry_policy
from ecgtune.search.training import NonFiniteLossError


def _internal(module: str, attribute: str) -> object:
    assert hasattr(importlib.import_module(module), attribute), f"Ray has no {module}.{attribute}"
    return getattr(importlib.import_module(module), attribute)


@pytest.mark.parametrize("name", [_ray_compat.TOKEN_AUTH_LOGGER, _ray_compat.STORAGE_LOGGER])
def test_the_quieted_loggers_are_the_ones_ray_logs_through(name):
    if name == _ray_compat.TOKEN_AUTH_LOGGER and Version(ray.__version__) < Version("2.59"):
        # Token authentication (and its banner) came with Ray 2.59: nothing to quiet before.
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)
        return
    module = importlib.import_module(name)
    loggers = [v.name for v in vars(module).values() if isinstance(v, logging.Logger)]
    assert name in loggers, f"{name} logs through {loggers}"


def test_loopback_switch_gives_a_local_instance_the_loopback_address():
    """What `ray.init` asks for its node IP (every gRPC server binds to it) while the switch
    is held, and the switch restored after: a later `ray start` is not loopback-only."""
    module, attribute = _ray_compat.LOOPBACK_SWITCH
    services = importlib.import_module("ray._private.services")
    assert "address" in inspect.signature(services.get_node_ip_address).parameters
    before = _internal(module, attribute)
    with _ray_compat.loopback_only():
        assert getattr(importlib.import_module(module), attribute) is False
        assert services.get_node_ip_address() == "127.0.0.1"
    assert getattr(importlib.import_module(module), attribute) == before


def test_a_ray_without_the_loopback_switch_fails_the_command(monkeypatch):
    """`ecgtune search` stops with one line naming the internal, before Ray starts."""
    module, attribute = _ray_compat.LOOPBACK_SWITCH
    monkeypatch.delattr(importlib.import_module(module), attribute)
    with pytest.raises(_ray_compat.RayCompatError, match=rf"{module}\.{attribute}"), \
            ray_session.loopback_only(local=True):  # what `init_ray` wraps `ray.init` in
        pytest.fail("the local instance would start")
    assert issubclass(_ray_compat.RayCompatError, SearchError)  # the CLI's one-line errors
    with ray_session.loopback_only(local=False):  # joining a cluster does not need it
        pass


def test_worker_log_printer_takes_a_batch_and_a_sink():
    module, attribute = _ray_compat.WORKER_LOG_PRINTER
    printer = _internal(module, attribute)
    assert _ray_compat.worker_log_printer() is printer
    params = list(inspect.signature(getattr(printer, "__wrapped__", printer)).parameters)
    assert params[:2] == ["data", "print_file"], params


def test_training_result_and_the_checkpoint_managers_state(tmp_path):
    """A manager given results through the compat functions answers Ray's public accessors
    (latest, best) from them."""
    module, attribute = _ray_compat.TRAINING_RESULT
    params = list(inspect.signature(_internal(module, attribute)).parameters)
    assert params == ["checkpoint", "metrics"], params
    assert _ray_compat.checkpoint_manager_class() is _internal(*_ray_compat.CHECKPOINT_MANAGER)
    manager = _ray_compat.checkpoint_manager_class()(checkpoint_config())
    for name in (_ray_compat.CHECKPOINT_RESULTS, _ray_compat.LATEST_CHECKPOINT_RESULT,
                 _ray_compat.CHECKPOINT_SCORE):
        assert hasattr(manager, name), f"Ray's checkpoint manager has no {name}"
    results = []
    for epoch, score in enumerate([0.3, 0.9, 0.5]):
        folder = tmp_path / f"checkpoint_{epoch:06d}"
        folder.mkdir()
        checkpoint = tune.Checkpoint(str(folder), filesystem=pyarrow.fs.LocalFileSystem())
        results.append(_ray_compat.training_result(checkpoint, {K.OBJECTIVE: score}))
    manager.register_checkpoint(results[0])
    assert _ray_compat.kept_checkpoint_results(manager) == [results[0]]
    _ray_compat.set_checkpoint_results(manager, results, latest=results[2])
    assert manager.latest_checkpoint_result is results[2]
    assert manager.best_checkpoint_result is results[1]  # sorted by the objective
    assert _ray_compat.kept_checkpoint_results(manager)[-1] is results[1]
    json.dumps(results[1].metrics)  # metrics kept as given


class _Trial(Trial):
    local_path = None  # no storage: Tune writes no error file


def test_tune_trial_retry_hooks_take_the_veto():
    """Ray Tune's own Trial (not a stand-in): a NaN failure is not retried, a crash is."""
    params = list(inspect.signature(Trial.handle_error).parameters)
    assert params[:2] == ["self", "exc"], params
    assert list(inspect.signature(Trial.should_recover).parameters) == ["self"]
    trial_cls = type("Trial", (_Trial,), {})
    assert install_no_retry_policy(trial_cls)
    crashed = trial_cls("__fake", stub=True, max_failures=2)
    crashed.handle_error(RuntimeError("worker died"))
    assert crashed.should_recover() and crashed.run_metadata.num_failures == 1
    diverged = trial_cls("__fake", stub=True, max_failures=2)
    diverged.handle_error(NonFiniteLossError("training loss became nan"))
    assert not diverged.should_recover() and diverged.run_metadata.num_failures == 1
