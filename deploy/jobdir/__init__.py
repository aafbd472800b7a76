"""The job directory: the one contract between the client, the workers and the environments.

What a job is (`spec`), where each file lives (`layout`), what a chunk's result file holds
(`results`), how a pickled function carries its source (`source`), and how task output is
marked in a log (`log_format`). Imports nothing else of deploy, so any side can read a job.
"""
