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
