"""ray_cluster.yaml is a real cluster-launcher config: it passes Ray's own schema validation."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_cluster_yaml_passes_rays_validator():
    prepared = prepare_config(_config())
    validate_config(prepared)  # raises jsonschema.ValidationError on any schema violation
    assert prepared["head_node_type"] == "head"


def test_cluster_has_cpu_head_and_autoscaling_gpu_workers():
    config = _config()
    nodes = config["available_node_types"]
    assert nodes["head"]["resources"] == {"CPU": 0}  # trials never land on the head
    worker = nodes["gpu_worker"]
    assert worker["min_workers"] == 0 < worker["max_workers"]
    assert worker["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5"))
    image = config["docker"]["image"]
    assert image.startswith("rayproject/ray:") and "gpu" in image


def test_cluster_installs_the_project_and_starts_mlflow_with_token_auth():
    config = _config()
    assert any("pip install" in c and "ecgtune" in c for c in config["setup_commands"])
    assert any("mlflow server" in c for c in config["head_setup_commands"])
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]


def test_validator_rejects_a_broken_config():
    import jsonschema
    import pytest

    config = _config()
    config["available_node_types"]["gpu_worker"]["min_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


def _mlflow_server_option(config: dict, option: str) -> str:
    command = next(c for c in config["head_setup_commands"] if "mlflow server" in c).split()
    return command[command.index(option) + 1]


def _head_env(config: dict) -> dict[str, str]:
    """`--env NAME=VALUE` of the head's container (shared and head-only run options)."""
    docker = config["docker"]
    options = docker.get("run_options", []) + docker.get("head_run_options", [])
    pairs = [o.split(None, 1)[1] for o in options if o.startswith("--env ")]
    return dict(p.split("=", 1) for p in pairs)


def test_tracking_store_is_postgresql_not_a_file_on_the_head():
    """Runs, metrics and registered models must outlive `ray down`: the head's MLflow server
    keeps them in PostgreSQL (one EDIT value) and proxies artifacts to S3."""
    config = _config()
    backend = _mlflow_server_option(config, "--backend-store-uri")
    assert backend.startswith("$"), "the URI is the one EDIT value, not spelled out here"
    uri = _head_env(config)[backend.lstrip("$").strip("{}")]
    assert uri.startswith("postgresql+psycopg2://"), uri  # the driver named: psycopg2
    assert "/home/ray" not in uri and "sqlite" not in uri
    server = next(c for c in config["head_setup_commands"] if "mlflow server" in c)
    assert "sqlite" not in server and "--serve-artifacts" in server
    artifacts = _mlflow_server_option(config, "--artifacts-destination")
    assert _head_env(config)[artifacts.split("/")[0].lstrip("$")].startswith("s3://")
    # The head installs the PostgreSQL driver (the project's `tracking-server` extra).
    assert any("ecgtune[tracking-server]" in c for c in config["head_setup_commands"])
    # Workers never get the database URI (it holds the password).
    assert not any("ECGTUNE_MLFLOW_DB" in o for o in config["docker"].get("run_options", []))
