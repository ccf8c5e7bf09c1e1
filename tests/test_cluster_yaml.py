"""Every shipped cluster file passes Ray's own validation offline and keeps the secure defaults."""

import copy
import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted(ROOT.glob("cluster*.yaml"))
SCHEMA = json.loads((resources.files("ray") / "autoscaler" / "ray-schema.json").read_text())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_a_cluster_file_ships():
    assert ROOT / "cluster.yaml" in CLUSTER_FILES


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_is_valid_for_ray_up(path):
    config = load(path)
    jsonschema.validate(config, SCHEMA)
    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_keeps_secure_defaults(path):
    config = load(path)
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2               # head and workers
    assert "--dashboard-host=127.0.0.1" in start                 # dashboard only via SSH tunnel
    assert "~/.ray/auth_token" in config["file_mounts"]          # the token on every node
    ports = [(p["FromPort"], p["ToPort"]) for p in
             config["provider"]["security_group"]["IpPermissions"]]
    assert ports == [(22, 22)]
    for rule in config["provider"]["security_group"]["IpPermissions"]:
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule["IpRanges"])
    workers = [n for name, n in config["available_node_types"].items()
               if name != config["head_node_type"]]
    head = config["available_node_types"][config["head_node_type"]]
    head_profile = head["node_config"]["IamInstanceProfile"]["Arn"]
    assert head_profile.endswith("instance-profile/lifelab-head")
    for node in workers:
        assert node["node_config"]["IamInstanceProfile"]["Arn"].endswith(
            "instance-profile/lifelab-node")
    assert workers and all(n["min_workers"] == 0 for n in workers)   # GPUs scale from zero
    # every node installs this checkout, whose pyproject pins Ray
    assert "~/lifelab" in config["file_mounts"]
    # every node installs the locked versions the test suite passed with
    assert any("pip install" in c and "-r ~/lifelab/requirements.lock" in c and "-e ~/lifelab" in c
               for c in config["setup_commands"])
    assert '"ray[tune]==' in (ROOT / "pyproject.toml").read_text()


def test_validation_rejects_a_broken_cluster_file():
    config = load(ROOT / "cluster.yaml")
    config["available_node_types"]["gpu_worker"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, SCHEMA)


def test_iam_policy_grants_only_the_results_bucket():
    policy = json.loads((ROOT / "cluster" / "iam-policy.json").read_text())
    resources_ = {r for s in policy["Statement"] for r in [s["Resource"]]}
    assert resources_ == {"arn:aws:s3:::YOUR-BUCKET", "arn:aws:s3:::YOUR-BUCKET/*"}
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert all(a.startswith("s3:") for a in actions)


def test_head_policy_launches_workers_with_the_node_role_only():
    policy = json.loads((ROOT / "cluster" / "iam-head-policy.json").read_text())
    by_service: dict[str, set] = {}
    for statement in policy["Statement"]:
        resources_ = statement["Resource"]
        for action in statement["Action"]:
            by_service.setdefault(action.split(":")[0], set()).update(
                [resources_] if isinstance(resources_, str) else resources_)
    assert set(by_service) == {"ec2", "iam", "s3"}
    # the autoscaler's calls (ray/autoscaler/_private/aws/node_provider.py), nothing else
    ec2 = {a for s in policy["Statement"] for a in s["Action"] if a.startswith("ec2:")}
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:DescribeInstances",
            "ec2:CreateTags"} <= ec2 and not {"ec2:*", "ec2:AuthorizeSecurityGroupIngress"} & ec2
    assert by_service["iam"] == {"arn:aws:iam::YOUR-ACCOUNT:role/lifelab-node",
                                 "arn:aws:iam::YOUR-ACCOUNT:instance-profile/lifelab-node"}
    assert by_service["s3"] == {"arn:aws:s3:::YOUR-BUCKET", "arn:aws:s3:::YOUR-BUCKET/*"}
