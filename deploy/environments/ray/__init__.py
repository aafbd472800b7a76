"""RayCluster: run a job's chunks as Ray tasks on an existing Ray cluster.

    rc = deploy.ray_cluster.create('rc', address='10.0.0.2:6379')     # or 'ray://host:10001'
    job = deploy.map_job.create(add, params, environment=rc, cpu=2, memory_gb=4)

Ray schedules: each chunk is one Ray task (num_cpus/memory/num_gpus from the job's per-task
resources, max_retries for a lost node, ray.cancel to stop it) that runs deploy's own task
runner (deploy.worker.engine_task). Modules: connect (reaching the head, versions),
tasks (what runs on the cluster), driver (following a job's tasks), cluster (the
environment), cli. This package imports nothing until used.
"""
