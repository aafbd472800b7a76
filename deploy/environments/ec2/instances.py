"""The cluster's instances: find the running ones, launch what is missing (cheapest fit,
falling back on capacity and quota errors), wait until they answer, terminate them.

Each launch says what it does and what it costs, as meadowrun does:

    1/3 workers allocated to existing EC2 instances: i-0abc (10.0.1.17)
    Launched 1 new EC2 instance (total $0.0898/hr) for the remaining 2 workers:
        i-0def (10.0.1.18): r5n.2xlarge (8 CPU/64.0 GB), spot ($0.0898/hr, 2.5% chance of interruption), will run 2 tasks at a time
"""
from __future__ import annotations

import base64
import socket
import time
from typing import Any, Callable

from . import hostkeys
from .config import DEFAULT_SSH_USER, IMAGE_PARAMETERS, Ec2Config, Ec2Error, client
from .provision import SSH_PORT, TAG, tags

# RunInstances errors that mean "not this type/market now": try the next allocation
CAPACITY_ERRORS = ("InsufficientInstanceCapacity", "MaxSpotInstanceCountExceeded", "VcpuLimitExceeded",
                   "InstanceLimitExceeded", "SpotMaxPriceTooLow", "InsufficientCapacity",
                   "Unsupported")
LIVE_STATES = ("pending", "running")


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _message(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")) or str(exc)


def address_of(instance: dict[str, Any]) -> str | None:
    """Where the client reaches an instance: its public address if any, else its private one."""
    return instance.get("PublicIpAddress") or instance.get("PrivateIpAddress")


def describe(record: dict[str, Any]) -> str:
    """`r5n.2xlarge (8 CPU/64.0 GB), spot ($0.0898/hr, 2.5% chance of interruption), will run 2 tasks at a time`."""
    size = f"{record['type']} ({record['vcpu']} CPU/{float(record['memory_gb']):.1f} GB)"
    price = record.get("price_per_hour")
    cost = "price unknown" if price is None else f"${price:.4f}/hr"
    if record.get("market") == "spot":
        market = f"spot ({cost}, {record.get('interruption_pct', 0):g}% chance of interruption)"
    else:
        market = f"on-demand ({cost})"
    many = "task" if record["tasks"] == 1 else "tasks"
    return f"{size}, {market}, will run {record['tasks']} {many} at a time"


class Instances:
    """The cluster's instances in its region (found by the cluster tag)."""

    def __init__(self, session: Any, config: Ec2Config, cluster_id: str, say: Callable[[str], None]) -> None:
        self.session, self.config, self.id, self.say = session, config, cluster_id, say
        self.ec2 = client(session, "ec2")
        # one attempt per RunInstances: a capacity error moves on to the next allocation at once
        self.launcher = client(session, "ec2", attempts=1)

    def live(self) -> list[dict[str, Any]]:
        """The cluster's pending and running instances."""
        found = []
        paginator = self.ec2.get_paginator("describe_instances")
        for page in paginator.paginate(Filters=[{"Name": f"tag:{TAG}", "Values": [self.id]},
                                                {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]):
            for reservation in page["Reservations"]:
                found.extend(reservation["Instances"])
        return found

    def image(self, instance_type: str) -> str:
        """image_id, else the region's current Amazon Linux image for the type's architecture."""
        if self.config.image_id:
            return self.config.image_id
        info = self.ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"][0]
        arch = "arm64" if "arm64" in info.get("ProcessorInfo", {}).get("SupportedArchitectures", []) else "x86_64"
        ssm = client(self.session, "ssm")
        try:
            return ssm.get_parameter(Name=IMAGE_PARAMETERS[arch])["Parameter"]["Value"]
        except Exception as exc:
            raise Ec2Error(f"cannot look up the current Amazon Linux image in {self.config.region} "
                           f"({IMAGE_PARAMETERS[arch]}): {_message(exc)}; give image_id=") from None

    def launch_one(self, allocation: Any, subnet: str, group: str, key_name: str, profile: str,
                   on_launched: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Launch one instance of `allocation` with a fresh host key; its record (also given
        to `on_launched` before waiting for anything, so that it is never lost)."""
        offer = allocation.offer
        private, public = hostkeys.generate()
        data = hostkeys.user_data(private, public)
        request: dict[str, Any] = dict(
            ImageId=self.image(offer.instance_type), InstanceType=offer.instance_type, MinCount=1,
            MaxCount=1, KeyName=key_name, SubnetId=subnet, SecurityGroupIds=[group],
            IamInstanceProfile={"Name": profile}, UserData=data,
            InstanceInitiatedShutdownBehavior="terminate",
            TagSpecifications=[{"ResourceType": "instance",
                                "Tags": tags(self.id, self.config) + [{"Key": "Name", "Value": self.id}]}])
        if offer.market == "spot":
            request["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        deadline = time.monotonic() + 60
        while True:
            try:
                instance = self.launcher.run_instances(**request)["Instances"][0]
                break
            except Exception as exc:
                # a new instance profile takes a few seconds to be usable in EC2
                if (_code(exc) == "InvalidParameterValue" and "iam" in _message(exc).lower()
                        and time.monotonic() < deadline):
                    time.sleep(2)
                    continue
                raise
        del private, data
        record = {"id": instance["InstanceId"], "address": address_of(instance), "type": offer.instance_type,
                  "vcpu": offer.vcpu, "memory_gb": offer.memory_gb, "market": offer.market,
                  "price_per_hour": offer.price_per_hour, "interruption_pct": offer.interruption_pct,
                  "tasks": allocation.tasks_per_instance, "host_key": public, "launched": time.time()}
        on_launched(record)
        return record

    def wait_running(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Wait until the instances run and have an address; id -> description. Ec2Error
        naming any that ended instead."""
        deadline = time.monotonic() + timeout
        while True:
            described = {}
            for reservation in self.ec2.describe_instances(InstanceIds=ids)["Reservations"]:
                for instance in reservation["Instances"]:
                    described[instance["InstanceId"]] = instance
            ended = [i for i, d in described.items() if d["State"]["Name"] not in LIVE_STATES]
            if ended:
                why = "; ".join(f"{i}: {described[i]['State']['Name']} "
                                f"({described[i].get('StateReason', {}).get('Message', 'no reason given')})"
                                for i in ended)
                raise Ec2Error(f"instances ended while starting: {why}")
            if all(d["State"]["Name"] == "running" and address_of(d) for d in described.values()) \
                    and len(described) == len(ids):
                return described
            if time.monotonic() > deadline:
                raise Ec2Error(f"instances not running after {timeout:g} s: {', '.join(ids)}")
            time.sleep(1)

    def settled(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Wait until none of the instances is pending; id -> description of those running."""
        deadline = time.monotonic() + timeout
        while True:
            described = {i["InstanceId"]: i for r in self.ec2.describe_instances(InstanceIds=ids)["Reservations"]
                         for i in r["Instances"]}
            if all(d["State"]["Name"] != "pending" and (d["State"]["Name"] != "running" or address_of(d))
                   for d in described.values()) or time.monotonic() > deadline:
                return {i: d for i, d in described.items() if d["State"]["Name"] == "running"}
            time.sleep(1)

    def running(self, instance_id: str) -> bool:
        return any(i["State"]["Name"] in LIVE_STATES for r in self.ec2.describe_instances(
            InstanceIds=[instance_id])["Reservations"] for i in r["Instances"])

    def terminate(self, ids: list[str]) -> None:
        if ids:
            self.ec2.terminate_instances(InstanceIds=ids)

    def wait_terminated(self, ids: list[str], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while ids and time.monotonic() < deadline:
            states = [i["State"]["Name"] for r in self.ec2.describe_instances(InstanceIds=ids)["Reservations"]
                      for i in r["Instances"]]
            if all(s == "terminated" for s in states):
                return
            time.sleep(1)


class InstanceGone(Exception):
    """An instance ended while the cluster waited for it (an idle or spot end)."""


def wait_for_ssh(address: str, timeout: float, port: int = SSH_PORT,
                 live: Callable[[], bool] = lambda: True) -> None:
    """Wait until an SSH server answers at `address` (an instance boots for a while);
    InstanceGone when `live()` says the instance ended meanwhile."""
    deadline = time.monotonic() + timeout
    checked = time.monotonic()
    while True:
        if time.monotonic() - checked > 2:
            checked = time.monotonic()
            if not live():
                raise InstanceGone(address)
        try:
            with socket.create_connection((address, port), timeout=3) as s:
                s.settimeout(5)
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise Ec2Error(f"no SSH server at {address}:{port} after {timeout:g} s (is cidr_ip this "
                           "machine's address, and the subnet reachable from here?)")
        time.sleep(0.5)


def existing_line(used: list[dict[str, Any]], workers: int, total: int) -> str:
    """`1/3 workers allocated to existing EC2 instances: i-0abc (10.0.1.17)`."""
    return (f"{workers}/{total} workers allocated to existing EC2 instances: "
            + ", ".join(f"{r['id']} ({r['address']})" for r in used))


def launched_lines(records: list[dict[str, Any]], workers: int, remaining: bool) -> list[str]:
    """`Launched 1 new EC2 instance (total $0.0898/hr) for the remaining 2 workers:` and one line each."""
    total = sum(r.get("price_per_hour") or 0 for r in records)
    many = "instance" if len(records) == 1 else "instances"
    noun = "worker" if workers == 1 else "workers"
    whom = f"the remaining {workers} {noun}" if remaining else f"{workers} {noun}"
    lines = [f"Launched {len(records)} new EC2 {many} (total ${total:.4f}/hr) for {whom}:"]
    lines += [f"    {r['id']} ({r['address']}): {describe(r)}" for r in records]
    return lines


def user_data_of(ec2: Any, instance_id: str) -> str:
    """An instance's user data as text (what the test hypervisor reads)."""
    value = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    raw = value.get("UserData", {}).get("Value")
    return base64.b64decode(raw).decode() if raw else ""


def default_user(config: Ec2Config) -> str:
    return config.ssh_user or DEFAULT_SSH_USER


__all__ = ["Instances", "InstanceGone", "CAPACITY_ERRORS", "wait_for_ssh", "existing_line", "launched_lines",
           "describe", "address_of"]
