"""What runs where tasks run: the worker loop (`loop`), the task process (`executor`, `runner`),
what tasks leave behind (`descendants`), process groups (`processes`) and starting a worker
in a ready process (`spawn`). Imports only the job directory contract and the stores.

`python -m deploy.worker STORE_URI [--processes N]` runs workers on a job.
"""
