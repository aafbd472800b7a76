"""deploy: run a function over many parameter sets in parallel, locally or on a cluster.

    import deploy
    job = deploy.map_job.create(add, [{'x': 1, 'y': 2}, {'x': 3, 'y': 4}])
    job.get_results()

Names load on first use, so `import deploy` (and every worker) stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "map_job": "deploy.map_job",
    "job": "deploy.single_job",
    "map": "deploy.parallel_map:map",
    "environment": "deploy.environment",
    "environments": "deploy.environments",
    "jobs": "deploy.jobs",
    "Job": "deploy.jobs.job:Job",
    "JobError": "deploy.errors:JobError",
    "Executor": "deploy.executor:Executor",
    "ssh_cluster": "deploy.environments.ssh.cluster",
    "hadoop_cluster": "deploy.environments.hadoop.cluster",
    "ec2_cluster": "deploy.environments.ec2.cluster",
    "Ec2Config": "deploy.environments.ec2.config:Ec2Config",
    "dask_cluster": "deploy.environments.dask.cluster",
    "ray_cluster": "deploy.environments.ray.cluster",
}   # a name joins only with its module: tests/test_public_names.py imports every one

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'deploy' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = importlib.import_module(module)
    if attr:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
