"""cluster.yaml is a valid Ray cluster-launcher config with the properties the README promises."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import REPO


def load():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_validates_against_rays_own_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load(), schema)


def test_head_and_gpu_worker_types():
    cfg = load()
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    workers = {k: v for k, v in types.items() if k != "head"}
    assert len(workers) >= 2
    for spec in workers.values():
        assert 0 <= spec["min_workers"] <= spec["max_workers"]
        assert spec["node_config"]["InstanceType"].startswith(("g", "p"))  # GPU instance families


def test_no_port_open_to_the_world_and_dashboard_on_loopback():
    cfg = load()
    text = (REPO / "cluster.yaml").read_text()
    assert "0.0.0.0" not in text
    perms = cfg["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in perms] == [(22, 22)]
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_shared_storage_mounted_on_every_node():
    cfg = load()
    init = " ".join(cfg["initialization_commands"])
    assert "mount -t nfs4" in init and "/mnt/protlm" in init
    assert any("pip install" in c and "protlm" in c for c in cfg["setup_commands"])
