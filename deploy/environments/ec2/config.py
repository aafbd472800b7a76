"""Ec2Config: where and what to launch (GraphLab's fields and meadowrun's cheapest-fit ones).

Plain data: `settings()` is what recreates it and never holds the AWS keys given to it.
Those are kept in memory for this process only (`session()` signs with them) and are never
written to the registry, the cluster state, user data, logs or a process argument list.
"""
from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

from ...errors import DeployError

DEFAULT_CPU_PER_TASK = 1.0
DEFAULT_MEMORY_GB_PER_TASK = 2.0
DEFAULT_INTERRUPTION_THRESHOLD = 15.0       # percent; 0 = on-demand instances only
# the usual login of the images the default image_id comes from
DEFAULT_SSH_USER = "ec2-user"
# the region's current Amazon Linux image, as AWS publishes it in public SSM parameters
IMAGE_PARAMETERS = {"x86_64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
                    "arm64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"}

_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


class Ec2Error(DeployError):
    """EC2 cannot do what was asked: the message says what and what to do."""


_loader: Any = None            # botocore's data loader, shared: service models parse once per process


def _botocore_session() -> Any:
    """A fresh botocore session (credentials resolved anew) sharing one data loader."""
    global _loader
    import botocore.session
    session = botocore.session.get_session()
    if _loader is None:
        _loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _loader)
    return session


@functools.lru_cache(maxsize=1)
def known_regions() -> list[str]:
    """The regions botocore knows EC2 in (its bundled endpoint data: no request)."""
    import boto3
    session = boto3.session.Session(botocore_session=_botocore_session())
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition_name=partition))
    return sorted(regions)


class Ec2Config:
    """Instances for an EC2 cluster: region, instance type or per-task needs, network, keys.

    `instance_type` given: every instance is of that type and runs as many tasks at a time
    as it has vCPUs (or as `cpu_per_task`/`memory_gb_per_task` allow, when given). Not
    given: the cheapest instance per concurrent task that gives each task
    `cpu_per_task` vCPUs (default 1) and `memory_gb_per_task` GB (default 2), spot where its
    interruption frequency is below `interruption_probability_threshold` percent (0:
    on-demand only). `price_file` is a JSON price list for air-gapped use (see pricing.py).
    """

    def __init__(self, region: str = "us-west-2", instance_type: str | None = None,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                 security_group: str | None = None, security_group_id: str | None = None,
                 tags: dict[str, str] | None = None, cidr_ip: str | None = None,
                 subnet_id: str | None = None, cpu_per_task: float | None = None,
                 memory_gb_per_task: float | None = None,
                 interruption_probability_threshold: float = DEFAULT_INTERRUPTION_THRESHOLD,
                 image_id: str | None = None, ssh_user: str | None = None,
                 price_file: str | None = None, aws_session_token: str | None = None) -> None:
        if not isinstance(region, str) or not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", region):
            raise ValueError(f"bad region {region!r}: write e.g. 'us-west-2'")
        if instance_type is not None and (not isinstance(instance_type, str)
                                          or not re.fullmatch(r"[a-z0-9-]+\.[a-z0-9-]+", instance_type)):
            raise ValueError(f"bad instance_type {instance_type!r}: write e.g. 'm5.xlarge'")
        if security_group is not None and security_group_id is not None:
            raise ValueError("give security_group (a name: used if it exists, else created) or "
                             "security_group_id (an existing group), not both")
        if (aws_access_key_id is None) != (aws_secret_access_key is None):
            raise ValueError("give both aws_access_key_id and aws_secret_access_key, or neither "
                             "(then the standard credential chain is used)")
        if cidr_ip is not None:
            try:
                cidr_ip = str(ipaddress.ip_network(cidr_ip, strict=False))
            except ValueError:
                raise ValueError(f"bad cidr_ip {cidr_ip!r}: write an address range such as "
                                 "'203.0.113.7/32'") from None
        if tags is not None and (not isinstance(tags, dict)
                                 or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())):
            raise TypeError("tags must be a dict of strings to strings")
        for what, value in (("cpu_per_task", cpu_per_task), ("memory_gb_per_task", memory_gb_per_task)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or value <= 0):
                raise ValueError(f"{what} must be a positive number, got {value!r}")
        threshold = interruption_probability_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 100:
            raise ValueError("interruption_probability_threshold is a percentage from 0 (on-demand "
                             f"only) to 100, got {threshold!r}")
        self.region = region
        self.instance_type = instance_type
        self.security_group = security_group
        self.security_group_id = security_group_id
        self.tags = dict(tags or {})
        self.cidr_ip = cidr_ip
        self.subnet_id = subnet_id
        self.cpu_per_task = None if cpu_per_task is None else float(cpu_per_task)
        self.memory_gb_per_task = None if memory_gb_per_task is None else float(memory_gb_per_task)
        self.interruption_probability_threshold = float(threshold)
        self.image_id = image_id
        self.ssh_user = ssh_user
        self.price_file = price_file
        # secrets: this object only, never settings()
        self.__keys = (aws_access_key_id, aws_secret_access_key, aws_session_token)

    # -- data ----------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What recreates the config, without the keys."""
        return {"region": self.region, "instance_type": self.instance_type,
                "security_group": self.security_group, "security_group_id": self.security_group_id,
                "tags": dict(self.tags), "cidr_ip": self.cidr_ip, "subnet_id": self.subnet_id,
                "cpu_per_task": self.cpu_per_task, "memory_gb_per_task": self.memory_gb_per_task,
                "interruption_probability_threshold": self.interruption_probability_threshold,
                "image_id": self.image_id, "ssh_user": self.ssh_user, "price_file": self.price_file}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "Ec2Config":
        known = set(cls(region="us-west-2").settings())
        return cls(**{k: v for k, v in settings.items() if k in known})

    def with_keys_of(self, other: "Ec2Config | None") -> "Ec2Config":
        """This config signing with `other`'s keys (the same cluster, reloaded in this process)."""
        if other is not None and self.__keys[0] is None:
            self.__keys = other.__keys
        return self

    @property
    def has_keys(self) -> bool:
        return self.__keys[0] is not None

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if v not in (None, {}))
        return f"Ec2Config({shown}{', keys given' if self.has_keys else ''})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ec2Config) and self.settings() == other.settings()

    # -- using it ------------------------------------------------------------------------

    @property
    def cheapest_fit(self) -> bool:
        """True when the instance type is chosen by price (no instance_type given)."""
        return self.instance_type is None

    def per_task(self) -> tuple[float, float]:
        """(vCPUs, GB) each task needs: as given, else the defaults."""
        return (self.cpu_per_task or DEFAULT_CPU_PER_TASK,
                self.memory_gb_per_task or DEFAULT_MEMORY_GB_PER_TASK)

    def session(self) -> Any:
        """A boto3 Session in the region, signing with the keys given or the standard chain;
        Ec2Error before any request when the region is unknown or there are no credentials."""
        import boto3
        if self.region not in known_regions():
            raise Ec2Error(f"unknown region {self.region!r}; known: {', '.join(known_regions())}")
        key, secret, token = self.__keys
        session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret,
                                        aws_session_token=token, region_name=self.region,
                                        botocore_session=_botocore_session())
        if session.get_credentials() is None:
            raise Ec2Error("no AWS credentials: give aws_access_key_id and aws_secret_access_key, "
                           "or set them up for boto3 (environment variables, ~/.aws/credentials, "
                           "AWS_PROFILE, or an instance role)")
        return session


def client(session: Any, service: str, attempts: int = 3) -> Any:
    """The boto3 client of `session` for `service` (made once per session; the endpoint from
    AWS_ENDPOINT_URL[_<SERVICE>]); `attempts`: 1 for calls whose errors mean "try another"."""
    from botocore.config import Config
    made = session.__dict__.setdefault("_deploy_clients", {})
    if (service, attempts) not in made:
        made[service, attempts] = session.client(service, config=Config(
            retries={"total_max_attempts": attempts, "mode": "standard"}, connect_timeout=10,
            read_timeout=60, max_pool_connections=32))
    return made[service, attempts]


__all__ = ["Ec2Config", "Ec2Error"]
