"""The client's view of jobs (Job, metrics, registry) and the task runner workers use.

The package is also the registry users index: `deploy.jobs.list()`, `deploy.jobs['name']`,
`deploy.jobs[0]`, `deploy.jobs.delete(pattern='add-*')`.
"""
from .._registry_module import make_registry_module

make_registry_module(__name__, "deploy.jobs.registry:jobs", ("list", "delete", "names"))
