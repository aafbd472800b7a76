"""The job directory layout (DESIGN.md), in one place: every path a job uses is built here."""
from __future__ import annotations

SPEC = "job.json"
FUNCTION = "function.pkl"
COMBINER = "combiner.pkl"
LAUNCH = "launch.json"        # the environment's record of how it started workers
CANCEL = "cancel"
COMBINED = "combined"
INPUTS = "inputs"
CLAIMS = "claims"
RESULTS = "results"
LOGS = "logs"
HEARTBEATS = "heartbeats"
CONTAINERS = "containers"    # where an environment notes what ran its workers (YARN containers)


def chunk_name(chunk: int) -> str:
    return f"{chunk:06d}"


def inputs(chunk: int) -> str:
    return f"{INPUTS}/{chunk_name(chunk)}"


def result(chunk: int) -> str:
    return f"{RESULTS}/{chunk_name(chunk)}"


def claim(chunk: int, attempt: int) -> str:
    return f"{CLAIMS}/{chunk_name(chunk)}.{attempt}"


def parse_claim(name: str) -> tuple[int, int] | None:
    """'000003.1' -> (3, 1); None for names that are not chunk claims."""
    chunk, _, attempt = name.partition(".")
    if chunk.isdigit() and attempt.isdigit():
        return int(chunk), int(attempt)
    return None


def log(chunk: int) -> str:
    return f"{LOGS}/{chunk_name(chunk)}"


def live_log(chunk: int, attempt: int) -> str:
    return f"{LOGS}/{chunk_name(chunk)}.{attempt}.live"


def heartbeat(worker: str) -> str:
    return f"{HEARTBEATS}/{worker}"


def container(name: str) -> str:
    return f"{CONTAINERS}/{name}"
