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
    # every node in the group cluster/security_group.py makes (SSH from one address); Ray's
    # own group would admit SSH from anywhere (tests/test_cluster_bootstrap.py)
    assert "security_group" not in config["provider"]
    assert all(n["node_config"]["SecurityGroupIds"] == ["YOUR-SG"]
               for n in config["available_node_types"].values())
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
        for action in _listed(statement["Action"]):
            by_service.setdefault(action.split(":")[0], set()).update(
                _listed(statement["Resource"]))
    assert set(by_service) == {"ec2", "iam", "s3"}
    # the autoscaler's calls (ray/autoscaler/_private/aws/node_provider.py), nothing else
    ec2 = {a for s in policy["Statement"] for a in _listed(s["Action"]) if a.startswith("ec2:")}
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:DescribeInstances",
            "ec2:CreateTags"} <= ec2 and not {"ec2:*", "ec2:AuthorizeSecurityGroupIngress"} & ec2
    assert by_service["iam"] == {"arn:aws:iam::YOUR-ACCOUNT:role/lifelab-node",
                                 "arn:aws:iam::YOUR-ACCOUNT:instance-profile/lifelab-node"}
    assert by_service["s3"] == {"arn:aws:s3:::YOUR-BUCKET", "arn:aws:s3:::YOUR-BUCKET/*"}


def _listed(value) -> list:
    return [value] if isinstance(value, str) else list(value)


def _tag_conditions(statement: dict) -> dict:
    """{condition key: value} of the StringEquals conditions on the `ray-cluster-name` tag."""
    equals = statement.get("Condition", {}).get("StringEquals", {})
    return {k: v for k, v in equals.items() if k.endswith("Tag/ray-cluster-name")}


def test_head_policy_touches_only_this_clusters_instances():
    """Every mutating EC2 grant holds only for what carries the cluster's tag: instances and
    volumes it launches (a tag in the request), instances it stops, starts, terminates or
    retags (a tag already on them). RunInstances also needs the launch's other parts (AMI,
    subnet, ...), which carry no tag: a launch still needs the tagged instance."""
    config = load(ROOT / "cluster.yaml")
    policy = json.loads((ROOT / "cluster" / "iam-head-policy.json").read_text())
    name = config["cluster_name"]
    assert policy["Statement"] and all(s["Effect"] == "Allow" for s in policy["Statement"])
    mutating = [s for s in policy["Statement"]
                if any(a.startswith("ec2:") and not a.startswith("ec2:Describe")
                       for a in _listed(s["Action"]))]
    grants: dict[tuple, list] = {}    # (action, resource) -> the tag conditions granted under
    for statement in mutating:
        assert "*" not in _listed(statement["Resource"])
        for action in _listed(statement["Action"]):
            for resource in _listed(statement["Resource"]):
                grants.setdefault((action, resource.rsplit(":", 1)[1]), []).append(
                    _tag_conditions(statement))
    instance, volume, group = "instance/*", "volume/*", "security-group/*"
    launched = {"aws:RequestTag/ray-cluster-name": name}
    owned = {"ec2:ResourceTag/ray-cluster-name": name}
    untagged_parts = set()
    for (action, resource), conditions in grants.items():
        if action == "ec2:RunInstances" and resource not in (instance, volume, group):
            untagged_parts.add(resource)
        else:
            assert all(c in (launched, owned) for c in conditions), (action, resource)
    assert grants[("ec2:RunInstances", instance)] == [launched]
    assert grants[("ec2:RunInstances", volume)] == [launched]
    assert grants[("ec2:RunInstances", group)] == [owned]
    lifecycle = ("ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances")
    assert all(grants[(action, instance)] == [owned] for action in lifecycle)
    assert {(a, r) for a, r in grants if a != "ec2:RunInstances"} == \
        {(a, instance) for a in lifecycle} | {("ec2:CreateTags", instance),
                                               ("ec2:CreateTags", volume)}
    # new tags without a tag already there: only on what a RunInstances call creates
    for statement in mutating:
        if "ec2:CreateTags" in _listed(statement["Action"]) and \
                "aws:RequestTag/ray-cluster-name" in _tag_conditions(statement):
            assert statement["Condition"]["StringEquals"]["ec2:CreateAction"] == "RunInstances"
    assert untagged_parts and not untagged_parts & {instance, volume, "*"}
    # Ray tags each instance with the cluster's name; the volumes carry it by cluster.yaml
    for node in config["available_node_types"].values():
        if node is config["available_node_types"][config["head_node_type"]]:
            continue
        specs = node["node_config"]["TagSpecifications"]
        assert {"ResourceType": "volume", "Tags": [{"Key": "ray-cluster-name", "Value": name}]} \
            in specs
    passes = [s for s in policy["Statement"] if "iam:PassRole" in _listed(s["Action"])]
    assert [s["Condition"] for s in passes] == \
        [{"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}]
