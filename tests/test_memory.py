"""A function closing over a large object is shared with LocalAsync workers by fork,
not copied per task or per worker."""
from __future__ import annotations

import deploy
from deploy.environment import LocalAsync
from waiting import wait_for

SIZE = 256 * 1024 * 1024


def private_mb() -> float:
    """Memory this process does not share with any other (kB lines of smaps_rollup)."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def test_closure_over_large_object_is_not_copied_per_worker():
    big = b"x" * SIZE

    def count(start):
        chunk = big[start:start + 1000]          # reads the shared pages
        return chunk.count(b"x"), private_mb()

    starts = [i * (SIZE // 8) for i in range(8)]
    job = deploy.map_job.create(count, [{"start": s} for s in starts], chunk_size=1,
                                environment=LocalAsync("two", num_workers=2))
    results = job.get_results()
    assert [r[0] for r in results] == [1000] * 8
    # each task process holds far less than the 256 MB object privately
    assert max(r[1] for r in results) < 100, results


def test_large_closure_is_not_copied_into_the_job_directory(monkeypatch):
    import os

    import pytest

    from deploy.errors import JobError
    monkeypatch.setenv("DEPLOY_MAX_FUNCTION_MB", "1")
    big = b"y" * (8 * 1024 * 1024)
    job = deploy.map_job.create(lambda i: big[i], [{"i": 0}, {"i": 1}])
    assert job.get_results() == [ord("y")] * 2
    assert not os.path.exists(job._store.local_path("function.pkl"))

    import time
    stuck = deploy.map_job.create(lambda i: big[i] if i == 0 else time.sleep(60),
                                  [{"i": 0}, {"i": 1}], chunk_size=1)
    wait_for(lambda: stuck.get_map_results()[0] == ord("y"), what="the first task")
    stuck.cancel()
    with pytest.raises(JobError, match="cannot be resumed"):
        stuck.resume()

    small = deploy.map_job.create(lambda i: i, [{"i": 3}])
    assert small.get_results() == [3]
    assert os.path.exists(small._store.local_path("function.pkl"))
