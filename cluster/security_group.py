"""Create (or correct) the cluster's security group: SSH from one address, nothing else in.

    python cluster/security_group.py YOUR-IP [--config cluster.yaml] [--vpc vpc-...]

prints the group's id, for `SecurityGroupIds` of every node type in cluster.yaml. Run it again
with a new address and the group's rules change to it (a running cluster keeps running).

Why not let `ray up` create the group: Ray's AWS bootstrap adds SSH from 0.0.0.0/0 to every
group it creates (extra `provider.security_group.IpPermissions` are added beside that rule, not
instead of it). A group named in `SecurityGroupIds` is used as it is, so this one keeps exactly:
tcp 22 from YOUR-IP/32, and all traffic between the cluster's nodes (members of the group).
Outbound stays open (pip, S3). The group carries the tag `ray-cluster-name`, which the head's
IAM policy requires of the groups its workers may be launched into.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

import yaml

GROUP_NAME = "lifelab-ssh-only"


def wanted_rules(group_id: str, ssh_from: str) -> set[tuple]:
    """The group's whole ingress as (protocol, from port, to port, source) tuples."""
    return {("tcp", 22, 22, ssh_from), ("-1", None, None, group_id)}


def current_rules(group: dict) -> set[tuple]:
    rules = set()
    for perm in group.get("IpPermissions", []):
        key = (perm["IpProtocol"], perm.get("FromPort"), perm.get("ToPort"))
        if key[0] == "-1":
            key = ("-1", None, None)
        sources = ([r["CidrIp"] for r in perm.get("IpRanges", [])]
                   + [r["CidrIpv6"] for r in perm.get("Ipv6Ranges", [])]
                   + [p["GroupId"] for p in perm.get("UserIdGroupPairs", [])]
                   + [p["PrefixListId"] for p in perm.get("PrefixListIds", [])])
        rules.update((*key, source) for source in sources)
    return rules


def as_permission(rule: tuple) -> dict:
    protocol, low, high, source = rule
    perm: dict = {"IpProtocol": protocol}
    if low is not None:
        perm.update(FromPort=low, ToPort=high)
    if source.startswith("sg-"):
        perm["UserIdGroupPairs"] = [{"GroupId": source}]
    elif source.startswith("pl-"):
        perm["PrefixListIds"] = [{"PrefixListId": source}]
    elif ":" in source:
        perm["Ipv6Ranges"] = [{"CidrIpv6": source}]
    else:
        perm["IpRanges"] = [{"CidrIp": source, "Description": "SSH for ray up / attach"}]
    return perm


def ensure_group(ec2, ssh_from: str, cluster_name: str, vpc_id: str | None = None,
                 name: str = GROUP_NAME) -> str:
    """The id of group `name` in `vpc_id` (the region's default VPC if None), created if
    missing, whose ingress is set to exactly `wanted_rules`."""
    if vpc_id is None:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise SystemExit("this region has no default VPC: name one with --vpc")
        vpc_id = vpcs[0]["VpcId"]
    found = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]},
                                                  {"Name": "group-name", "Values": [name]}])
    if found["SecurityGroups"]:
        group = found["SecurityGroups"][0]
    else:
        tags = [{"Key": "ray-cluster-name", "Value": cluster_name}]
        created = ec2.create_security_group(
            GroupName=name, VpcId=vpc_id, Description=f"{cluster_name}: SSH from one address",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}])
        group = {"GroupId": created["GroupId"], "IpPermissions": []}
    group_id = group["GroupId"]
    ec2.create_tags(Resources=[group_id], Tags=[{"Key": "ray-cluster-name",
                                                 "Value": cluster_name}])
    have, want = current_rules(group), wanted_rules(group_id, ssh_from)
    if have - want:
        ec2.revoke_security_group_ingress(
            GroupId=group_id, IpPermissions=[as_permission(r) for r in sorted(have - want,
                                                                                key=str)])
    if want - have:
        ec2.authorize_security_group_ingress(
            GroupId=group_id, IpPermissions=[as_permission(r) for r in sorted(want - have,
                                                                                key=str)])
    return group_id


def single_address(text: str) -> str:
    """'203.0.113.7' or '203.0.113.7/32' -> '203.0.113.7/32'; a wider range is refused."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address: give your public "
                                         "address, e.g. from `curl https://checkip.amazonaws.com`"
                                         ) from None
    if net.num_addresses != 1:
        raise argparse.ArgumentTypeError(f"{text} is a range: give one address (x.x.x.x)")
    return str(net)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ssh_from", type=single_address, help="your public IP address")
    parser.add_argument("--config", default="cluster.yaml", help="region and cluster name")
    parser.add_argument("--vpc", help="the VPC (default: the region's default VPC)")
    args = parser.parse_args(argv)
    import boto3

    with open(args.config) as f:
        config = yaml.safe_load(f)
    ec2 = boto3.client("ec2", region_name=config["provider"]["region"])
    group_id = ensure_group(ec2, args.ssh_from, config["cluster_name"], args.vpc)
    print(group_id)
    print(f"put {group_id} in place of YOUR-SG in {args.config}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
