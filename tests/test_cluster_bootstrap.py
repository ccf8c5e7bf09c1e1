"""`ray up cluster.yaml` leaves a cluster as closed as documented: Ray's own AWS bootstrap, run on
the shipped cluster.yaml against a mocked EC2 (moto, no network), opens SSH to the user's address
only, and nothing else to anyone outside the cluster."""

import functools
import importlib.util
from pathlib import Path

import boto3
import pytest
import yaml
from ray.autoscaler._private.aws import node_provider

moto = pytest.importorskip("moto")

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-west-2"
USER_IP = "203.0.113.7"
OPEN = {"0.0.0.0/0", "::/0"}


def _security_group_tool():
    spec = importlib.util.spec_from_file_location("security_group",
                                                  ROOT / "cluster" / "security_group.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


security_group = _security_group_tool()
# moto's static instance-type catalogue takes ~10 s to page through: read it once per run
_instance_types_once = functools.lru_cache(node_provider.list_ec2_instances)


@pytest.fixture
def aws(monkeypatch, tmp_path):
    # Ray writes its key pair to ~/.ssh; fake credentials keep boto3 off any real account
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", REGION)]:
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(node_provider, "list_ec2_instances", _instance_types_once)
    with moto.mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def bootstrap(config: dict) -> dict:
    """What `ray up` does to the config before it launches anything."""
    from ray.autoscaler._private.commands import _bootstrap_config

    return _bootstrap_config(config, no_config_cache=True)


def shipped_config(group_id: str) -> dict:
    text = (ROOT / "cluster.yaml").read_text()
    assert "YOUR-SG" in text
    return yaml.safe_load(text.replace("YOUR-SG", group_id))


def ingress(ec2) -> list[tuple]:
    """(group, protocol, from port, to port, source) of every rule of every group."""
    groups = ec2.describe_security_groups()["SecurityGroups"]
    return [(g["GroupId"], *rule) for g in groups for rule in security_group.current_rules(g)]


def test_ray_up_opens_ssh_to_the_users_address_only(aws, capsys):
    # the documented steps: the tool makes the group, its id goes into cluster.yaml, `ray up`
    assert security_group.main([USER_IP, "--config", str(ROOT / "cluster.yaml")]) == 0
    group_id = capsys.readouterr().out.strip()
    config = bootstrap(shipped_config(group_id))

    nodes = config["available_node_types"]
    assert {name: n["node_config"]["SecurityGroupIds"] for name, n in nodes.items()} == \
        {name: [group_id] for name in nodes}
    vpc = aws.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]["VpcId"]
    subnets = {s for n in nodes.values() for s in n["node_config"]["SubnetIds"]}
    assert {s["VpcId"] for s in aws.describe_subnets(SubnetIds=list(subnets))["Subnets"]} == {vpc}

    rules = ingress(aws)
    assert not [r for r in rules if r[4] in OPEN]                     # nothing from anywhere
    outside = [r for r in rules if not r[4].startswith("sg-")]
    assert outside == [(group_id, "tcp", 22, 22, f"{USER_IP}/32")]    # SSH from the user only
    inside = [r for r in rules if r[4].startswith("sg-")]
    assert inside == [(group_id, "-1", None, None, group_id)]         # the nodes to each other
    # Ray made no group of its own, and ours carries the tag the head's IAM policy requires
    assert {g["GroupName"] for g in aws.describe_security_groups()["SecurityGroups"]} == \
        {"default", security_group.GROUP_NAME}
    tags = aws.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]["Tags"]
    assert {"Key": "ray-cluster-name", "Value": "lifelab"} in tags


def test_a_worker_launch_carries_the_tag_the_head_policy_requires(aws):
    # what the head's autoscaler sends to RunInstances for a GPU worker
    group_id = security_group.ensure_group(aws, f"{USER_IP}/32", "lifelab")
    config = bootstrap(shipped_config(group_id))
    provider = node_provider.AWSNodeProvider(config["provider"], config["cluster_name"])
    worker = dict(config["available_node_types"]["gpu_worker"]["node_config"])
    worker.pop("IamInstanceProfile")                    # (no such profile in the mock account)
    provider.create_node(worker, {"ray-user-node-type": "gpu_worker"}, 1)
    [instance] = [i for r in aws.describe_instances()["Reservations"] for i in r["Instances"]]
    tag = {"Key": "ray-cluster-name", "Value": config["cluster_name"]}
    assert tag in instance["Tags"]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group_id]
    volumes = aws.describe_volumes()["Volumes"]
    assert volumes and all(tag in v.get("Tags", []) for v in volumes)


def test_ray_creates_an_open_group_when_none_is_named(aws):
    # why the group is ours: Ray's own adds SSH from anywhere, whatever rules the config lists
    config = shipped_config("unused")
    for node in config["available_node_types"].values():
        del node["node_config"]["SecurityGroupIds"]
    config["provider"]["security_group"] = {"IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": f"{USER_IP}/32"}]}]}
    bootstrap(config)
    assert ("tcp", 22, 22, "0.0.0.0/0") in [r[1:] for r in ingress(aws)]


def test_an_unreplaced_placeholder_stops_ray_up(aws, capsys):
    # no group of that id: `ray up` stops, rather than fall back to an open group of Ray's own
    with pytest.raises(AssertionError):
        bootstrap(shipped_config("sg-0000000000placeholder"))
    assert "Failed to detect a security group" in capsys.readouterr().err
    assert [g["GroupName"] for g in aws.describe_security_groups()["SecurityGroups"]] == ["default"]


def test_rerunning_the_tool_replaces_the_address_and_drops_stray_rules(aws):
    group_id = security_group.ensure_group(aws, f"{USER_IP}/32", "lifelab")
    aws.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
         "IpRanges": [{"CidrIp": "198.51.100.0/24"}]}])
    assert security_group.ensure_group(aws, "198.51.100.9/32", "lifelab") == group_id
    assert sorted(ingress(aws), key=str) == sorted(
        [(group_id, "tcp", 22, 22, "198.51.100.9/32"), (group_id, "-1", None, None, group_id)],
        key=str)


@pytest.mark.parametrize("text", ["0.0.0.0/0", "203.0.113.0/24", "my-laptop"])
def test_the_tool_takes_one_address_only(text):
    with pytest.raises(SystemExit) as exc:
        security_group.main([text])
    assert exc.value.code == 2


@pytest.mark.parametrize("name", ["iam-policy.json", "iam-head-policy.json"])
def test_iam_accepts_the_policies(aws, name):
    # (IAM's syntax check, as moto mirrors it: condition operators, ARNs, element names)
    iam = boto3.client("iam", region_name=REGION)
    document = (ROOT / "cluster" / name).read_text()
    assert iam.create_policy(PolicyName=name.removesuffix(".json"), PolicyDocument=document)
