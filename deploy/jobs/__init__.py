"""The client's view of a job (Job, metrics, registry) and the task runner workers use."""
