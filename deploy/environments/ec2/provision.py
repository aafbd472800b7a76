"""What a cluster creates in the AWS account besides instances, and deleting exactly that.

    key pair          the public half of an ed25519 key made here; the private key stays on
                      this machine (deploy home, 0600) and never goes to AWS
    security group    SSH (tcp/22) only from cidr_ip (default: the VPC's own range); only when
                      neither security_group_id nor an existing group named security_group is
                      given (a group the user named and that exists is used, never deleted)
    IAM role, instance profile
                      may read/write/list only under s3_path and terminate only instances
                      tagged as this cluster's (the idle agent terminates its own instance)

Everything is tagged `deploy:cluster=<cluster id>` plus the user's tags. Each resource is
recorded in the cluster state (`created`) as soon as it exists, so `stop()` deletes what
was made even after a crash midway, and nothing it did not make.
"""
from __future__ import annotations

import ipaddress
import json
import os
import time
from typing import Any, Callable

from .config import Ec2Config, Ec2Error, client

TAG = "deploy:cluster"
SSH_PORT = 22
TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


def tags(cluster_id: str, config: Ec2Config) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in {**config.tags, TAG: cluster_id}.items()]


def role_policy(cluster_id: str, s3_path: str, region: str) -> dict[str, Any]:
    """The instances' permissions: objects under s3_path, and terminating this cluster's
    own instances (by their tag)."""
    bucket, _, prefix = s3_path[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    objects = f"arn:aws:s3:::{bucket}/{prefix}/*" if prefix else f"arn:aws:s3:::{bucket}/*"
    listing: dict[str, Any] = {"Sid": "ListUnderS3Path", "Effect": "Allow", "Action": "s3:ListBucket",
                               "Resource": f"arn:aws:s3:::{bucket}"}
    if prefix:
        listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadWriteUnderS3Path", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "Resource": objects},
        listing,
        {"Sid": "TerminateOwnInstances", "Effect": "Allow", "Action": "ec2:TerminateInstances",
         "Resource": f"arn:aws:ec2:{region}:*:instance/*",
         "Condition": {"StringEquals": {f"aws:ResourceTag/{TAG}": cluster_id}}}]}


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class Provisioner:
    """Creates the cluster's key pair, security group, role and profile, recording each
    in `created` (the cluster state's dict) through `record()` as soon as it exists."""

    def __init__(self, session: Any, config: Ec2Config, cluster_id: str, s3_path: str,
                 created: dict[str, Any], record: Callable[[], None], say: Callable[[str], None]) -> None:
        self.session, self.config, self.id, self.s3_path = session, config, cluster_id, s3_path
        self.created, self.record, self.say = created, record, say
        self.ec2 = client(session, "ec2")
        self.iam = client(session, "iam")

    # -- network ------------------------------------------------------------------------

    def subnet(self) -> dict[str, Any]:
        """The subnet to launch in: subnet_id, else a default subnet of the default VPC."""
        if self.config.subnet_id:
            try:
                return self.ec2.describe_subnets(SubnetIds=[self.config.subnet_id])["Subnets"][0]
            except Exception as exc:
                if _code(exc).startswith("InvalidSubnet"):
                    raise Ec2Error(f"no subnet {self.config.subnet_id!r} in {self.config.region}") from None
                raise
        found = self.ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
        if not found:
            raise Ec2Error(f"{self.config.region} has no default VPC: give subnet_id= of a subnet to "
                           "launch in")
        return sorted(found, key=lambda s: s["AvailabilityZone"])[0]

    def key_pair(self, public_key: str) -> str:
        name = self.created.get("key_pair")
        if name:
            return name
        name = self.id
        try:
            self.ec2.delete_key_pair(KeyName=name)   # a leftover of ours from a failed run
        except Exception:
            pass
        self.ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public_key.encode(),
                                 TagSpecifications=[{"ResourceType": "key-pair",
                                                     "Tags": tags(self.id, self.config)}])
        self.created["key_pair"] = name
        self.record()
        return name

    def security_group(self, subnet: dict[str, Any]) -> str:
        """The group to launch with: security_group_id, an existing group named
        security_group, or one made here admitting SSH from cidr_ip only."""
        if self.config.security_group_id:
            try:
                self.ec2.describe_security_groups(GroupIds=[self.config.security_group_id])
            except Exception as exc:
                if _code(exc).startswith("InvalidGroup"):
                    raise Ec2Error(f"no security group {self.config.security_group_id!r} in "
                                   f"{self.config.region}") from None
                raise
            return self.config.security_group_id
        if self.created.get("security_group"):
            return self.created["security_group"]
        vpc = subnet["VpcId"]
        name = self.config.security_group or self.id
        found = self.ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]},
                                                           {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
        if found and self.config.security_group:
            self.say(f"Using the existing security group {name} ({found[0]['GroupId']})")
            return found[0]["GroupId"]
        for group in found:              # ours, left by a run that failed before recording it
            self.ec2.delete_security_group(GroupId=group["GroupId"])
        cidr = self.config.cidr_ip or self._vpc_cidr(vpc)
        group = self.ec2.create_security_group(
            GroupName=name, Description=f"deploy cluster {self.id}: SSH from {cidr}", VpcId=vpc,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": tags(self.id, self.config)}])["GroupId"]
        self.created["security_group"] = group
        self.record()
        self.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT,
            "IpRanges": [{"CidrIp": cidr, "Description": "deploy: SSH"}]}])
        note = "" if self.config.cidr_ip else " (the VPC's range; set cidr_ip= to reach it from elsewhere)"
        self.say(f"Created security group {name} ({group}) admitting SSH from {cidr}{note}")
        return group

    def _vpc_cidr(self, vpc: str) -> str:
        block = self.ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["CidrBlock"]
        return str(ipaddress.ip_network(block, strict=False))

    # -- identity -------------------------------------------------------------------------

    def instance_profile(self) -> str:
        """The instance profile (made with its role): objects under s3_path, own instances."""
        name = self.id[:64]
        tagged = [t for t in tags(self.id, self.config)]
        if not self.created.get("role"):
            try:
                self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST),
                                     Description=f"deploy cluster {self.id}", Tags=tagged)
            except Exception as exc:
                if _code(exc) != "EntityAlreadyExists":
                    raise
                self._delete_role(name)             # ours, left by a failed run
                self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST),
                                     Description=f"deploy cluster {self.id}", Tags=tagged)
            self.created["role"] = name
            self.record()
            self.iam.put_role_policy(RoleName=name, PolicyName="deploy-cluster", PolicyDocument=json.dumps(
                role_policy(self.id, self.s3_path, self.config.region)))
        if not self.created.get("instance_profile"):
            try:
                self.iam.create_instance_profile(InstanceProfileName=name, Tags=tagged)
            except Exception as exc:
                if _code(exc) != "EntityAlreadyExists":
                    raise
            self.created["instance_profile"] = name
            self.record()
            self.iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        return self.created["instance_profile"]

    def _delete_role(self, name: str) -> None:
        for policy in self.iam.list_role_policies(RoleName=name).get("PolicyNames", []):
            self.iam.delete_role_policy(RoleName=name, PolicyName=policy)
        for profile in self.iam.list_instance_profiles_for_role(RoleName=name).get("InstanceProfiles", []):
            self.iam.remove_role_from_instance_profile(InstanceProfileName=profile["InstanceProfileName"],
                                                       RoleName=name)
        self.iam.delete_role(RoleName=name)


def delete(session: Any, created: dict[str, Any], record: Callable[[], None],
           say: Callable[[str], None]) -> list[str]:
    """Delete what `created` lists (after its instances are gone), forgetting each as it
    goes; the problems met, each naming the resource left behind."""
    ec2, iam = client(session, "ec2"), client(session, "iam")
    problems = []

    def attempt(what: str, key: str, fn: Callable[[], None], tries: int = 1) -> None:
        if not created.get(key):
            return
        for i in range(tries):
            try:
                fn()
                break
            except Exception as exc:
                if _code(exc) in ("NoSuchEntity", "InvalidKeyPair.NotFound", "InvalidGroup.NotFound"):
                    break
                if i == tries - 1:
                    problems.append(f"{what} {created[key]} was not deleted: {exc}")
                    return
                time.sleep(2)          # a group stays in use a little after its instances end
        say(f"Deleted {what} {created[key]}")
        created.pop(key)
        record()

    profile, role = created.get("instance_profile"), created.get("role")

    def drop_profile() -> None:
        if role:
            try:
                iam.remove_role_from_instance_profile(InstanceProfileName=profile, RoleName=role)
            except Exception as exc:
                if _code(exc) != "NoSuchEntity":
                    raise
        iam.delete_instance_profile(InstanceProfileName=profile)

    def drop_role() -> None:
        for policy in iam.list_role_policies(RoleName=role).get("PolicyNames", []):
            iam.delete_role_policy(RoleName=role, PolicyName=policy)
        iam.delete_role(RoleName=role)

    attempt("instance profile", "instance_profile", drop_profile)
    attempt("IAM role", "role", drop_role)
    attempt("security group", "security_group",
            lambda: ec2.delete_security_group(GroupId=created["security_group"]), tries=30)
    attempt("key pair", "key_pair", lambda: ec2.delete_key_pair(KeyName=created["key_pair"]))
    return problems


def key_dir(cluster_id: str) -> str:
    """Where this machine keeps the cluster's SSH files (private key, known_hosts)."""
    from ...config import home
    return os.path.join(str(home()), "ec2", cluster_id)


__all__ = ["Provisioner", "delete", "role_policy", "tags", "TAG", "key_dir"]
