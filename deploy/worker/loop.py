"""The loop every environment runs: `python -m deploy.worker STORE_URI [--processes N]`.

A worker takes chunks from the job directory by exclusive create, runs them through an
executor, publishes one result file per chunk, takes over chunks whose worker stopped
heart-beating, and runs the combiner when it finishes the last chunk. It imports only the
standard library, cloudpickle and the store it is pointed at.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import tempfile
import time
from typing import Callable

from deploy.worker import executor as ex
from deploy.worker import runner
from deploy.jobdir.results import C_FAILED, C_OK, ChunkResult, PackedResult, canceled, unfinished
from deploy.jobdir.spec import JobSpec
from deploy.worker.processes import process_alive
from deploy.store import Storage, open_store
from deploy.jobdir import cancel, layout

DONE = "done"


def load_functions(store: Storage, spec: JobSpec) -> dict[str, Callable]:
    """The job's pickled function (and combiner), loaded from the job directory."""
    if not spec.function_stored:
        raise RuntimeError(f"job {spec.name}: its function was too large to keep in the job "
                           "directory (max_function_mb) and only the workers forked by its "
                           "creator had it")
    functions = {"map": pickle.loads(store.get(layout.FUNCTION))}
    if spec.has_combiner:
        functions["combine"] = pickle.loads(store.get(layout.COMBINER))
    return functions


class Worker:
    """One worker: claims chunks until the job is done, canceled, or nothing is left to take."""

    def __init__(self, store: Storage, spec: JobSpec | None = None,
                 functions: dict[str, Callable] | None = None, inline: bool = False,
                 wake_fd: int | None = None) -> None:
        self.store = store
        self.spec = spec or JobSpec.from_json(store.get(layout.SPEC))
        self.functions = functions or load_functions(store, self.spec)
        self.id = f"{runner.worker_id()}-{os.urandom(2).hex()}"
        self.wake_fd = wake_fd          # the client's wake pipe (LocalAsync): a byte per result
        self.executor = (ex.InlineExecutor if inline else ex.ForkExecutor)(
            self.functions, self.spec.task_timeout, self.id,
            () if wake_fd is None else (wake_fd,), resources=self.spec.resources)
        self.poll_seconds = max(store.poll_seconds, 0.1)
        # a cancel marker is one stat away on local disk, so it is looked for before every
        # inline task (none starts after cancel() returned); remote stores are asked less often
        self.cancel_check_seconds = 0.0 if store.local_path("") else store.poll_seconds
        self.seq = 0
        self.next_beat = float("inf")   # the first heartbeat: just before the first claim
        self.next_cancel_check = 0.0
        self.canceled = False
        self.seen: dict[str, tuple[object, float]] = {}
        self.scratch = None if store.local_path("") else tempfile.mkdtemp(prefix="deploy-worker-")
        self.live: tuple[str, str] | None = None       # (store path, local file) being streamed
        self.pushed: set[str] = set()                  # live logs that reached the store
        self.complete: set[int] = set()                # chunks known to have every task Completed
        self._claim_names: set[str] = set()            # claim files parsed into _claims
        self._claims: dict[int, int] = {}

    # -- liveness ---------------------------------------------------------------------

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_beat:
            return
        self.seq += 1
        self.store.put(layout.heartbeat(self.id), json.dumps(
            {"worker": self.id, "host": runner.HOST, "pid": os.getpid(), "time": time.time(),
             "seq": self.seq}).encode())
        if self.live is not None:
            path, local = self.live
            try:
                with open(local, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                data = b""
            if data:
                self.store.put(path, data)
                self.pushed.add(path)
        self.next_beat = now + self.spec.heartbeat_seconds

    def is_dead(self, owner: str) -> bool:
        """A claim's owner is dead when its process is gone (same host) or its heartbeat
        has not changed for a whole lease, as timed by this worker's own clock."""
        try:
            hb = json.loads(self.store.get(layout.heartbeat(owner)))
        except (FileNotFoundError, ValueError):
            hb = None
        if hb and hb.get("host") == runner.HOST and not process_alive(int(hb["pid"])):
            return True
        mark = hb.get("seq") if hb else None
        now = time.monotonic()
        seen = self.seen.get(owner)
        if seen is None or seen[0] != mark:
            self.seen[owner] = (mark, now)
            return False
        return now - seen[1] > self.spec.lease_seconds

    def poll(self) -> bool:
        """Called while tasks run: heart-beat, and tell whether to go on (False: canceled)."""
        self.beat()
        now = time.monotonic()
        if not self.canceled and now >= self.next_cancel_check:
            self.canceled = self.store.exists(layout.CANCEL)
            self.next_cancel_check = now + self.cancel_check_seconds
        return not self.canceled

    def wake(self) -> None:
        """Tell a waiting client that a result was published (when it gave a wake pipe)."""
        if self.wake_fd is not None:
            try:
                os.write(self.wake_fd, b"\0")
            except BlockingIOError:
                pass                    # a full pipe wakes the client just as well
            except OSError:
                self.wake_fd = None     # the client is gone

    # -- taking work ------------------------------------------------------------------

    def _read_result(self, chunk: int) -> ChunkResult:
        return ChunkResult.from_dict(pickle.loads(self.store.get(layout.result(chunk))))

    def map_done(self) -> tuple[bool, bool]:
        """(every chunk has its result, every task completed)."""
        done = self.store.list(layout.RESULTS)
        if len(done) < self.spec.chunk_count:
            return False, False
        for c in range(self.spec.chunk_count):
            if c not in self.complete:       # published results never change: read each once
                if self._read_result(c).status.count(C_OK) != len(self.spec.chunk_tasks(c)):
                    return True, False
                self.complete.add(c)
        return True, True

    def candidates(self) -> list[int] | str:
        """Chunks that may still need a worker, or DONE."""
        n = self.spec.chunk_count
        results = {int(name) for name in self.store.list(layout.RESULTS) if name.isdigit()}
        if len(results) < n:
            return [c for c in range(n) if c not in results]
        if self.spec.has_combiner and not self.canceled and not self.store.exists(layout.COMBINED):
            if self.map_done()[1]:
                return [n]                    # the combiner, as one more "chunk"
        return DONE

    def _claimed(self) -> dict[int, int]:
        """chunk -> its latest claimed attempt. Claims stay while workers run, so only names
        not seen before are parsed: a thousand one-task chunks cost a listing each, not a
        thousand parses each."""
        names = set(self.store.list(layout.CLAIMS))
        if not names >= self._claim_names:     # claims went away (a resume): start over
            self._claim_names, self._claims = set(), {}
        for name in names - self._claim_names:
            parsed = layout.parse_claim(name)
            if parsed:
                self._claims[parsed[0]] = max(parsed[1], self._claims.get(parsed[0], -1))
        self._claim_names = names
        return self._claims

    def claim_next(self, combiner: bool = True) -> tuple[int, int] | str | None:
        """(chunk, attempt) this worker now owns, DONE, or None (all taken by live workers);
        the combiner only if `combiner`. A chunk nobody claimed has no result yet (only a
        cancel writes results without a claim), so results are listed only once every
        chunk has been claimed."""
        claimed = self._claimed()
        for chunk in range(self.spec.chunk_count):
            if chunk not in claimed and self.store.create_exclusive(
                    layout.claim(chunk, 0), self.id.encode()):
                return chunk, 0
        todo = self.candidates()
        if todo == DONE:
            return DONE
        if not combiner:
            todo = [c for c in todo if c < self.spec.chunk_count]
        for chunk in todo:
            if chunk not in claimed and self.store.create_exclusive(
                    layout.claim(chunk, 0), self.id.encode()):
                return chunk, 0
        for chunk in todo:
            if chunk in claimed:
                attempt = claimed[chunk]
                try:
                    owner = self.store.get(layout.claim(chunk, attempt)).decode()
                except FileNotFoundError:
                    continue
                if owner != self.id and self.is_dead(owner) and self.store.create_exclusive(
                        layout.claim(chunk, attempt + 1), self.id.encode()):
                    return chunk, attempt + 1
        return None

    # -- running ----------------------------------------------------------------------

    def calls(self, chunk: int, attempt: int = 0) -> tuple[bytes, int, int, int]:
        """The chunk's input file, first task index, first and last attempt: a chunk taken
        over from a lost worker counts as its tasks' next attempt. The task process
        unpickles the inputs; the worker never needs to."""
        first = attempt + 1
        return (self.store.get(layout.inputs(chunk)), self.spec.chunk_tasks(chunk).start,
                first, first + self.spec.max_retries)

    def log_file(self, chunk: int, attempt: int) -> str:
        path = layout.live_log(chunk, attempt)
        local = self.store.local_path(path)
        if local is None:
            local = os.path.join(self.scratch, path.replace("/", "_"))
            self.live = (path, local)
        else:
            os.makedirs(os.path.dirname(local), mode=0o700, exist_ok=True)
        return local

    def publish_log(self, chunk: int, attempt: int, local: str) -> None:
        """Make the attempt's output the chunk's log (first publisher wins), drop the live file."""
        live = layout.live_log(chunk, attempt)
        remote = self.store.local_path(live) is None
        pushed = live in self.pushed
        self.pushed.discard(live)
        if self.live is not None and self.live[0] == live:
            self.live = None
        try:
            with open(local, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        if data:                            # silent chunks have no log: one round trip less
            self.store.create_exclusive(layout.log(chunk), data)
        if not remote or pushed:
            self.store.delete(live)
        if remote and os.path.exists(local):
            os.unlink(local)

    def result_bytes(self, result: ChunkResult | PackedResult) -> bytes | bytearray:
        """A result file's contents. Packed rows are published as the task process made
        them (in task order already), as bytes for remote stores' clients."""
        if not isinstance(result, PackedResult):
            return runner.dumps_result(result)
        return result.raw if self.store.local_path("") else bytes(result.raw)

    def publish(self, chunk: int, attempt: int, result: ChunkResult | PackedResult) -> bool:
        """Publish the chunk's rows (unless the task process did); the first publisher
        wins, so every task has one final row."""
        packed = isinstance(result, PackedResult)
        if packed and result.published is not None:
            published = result.published
        else:
            if not packed:
                result = result.sorted()
            published = self.store.create_exclusive(layout.result(chunk), self.result_bytes(result))
        if published:
            self.wake()
        failed = result.failed()
        if published and failed is not None and self.spec.fail_fast and not self.canceled:
            index = self.spec.chunk_tasks(chunk)[failed] if packed else result.index[failed]
            self.store.create_exclusive(layout.CANCEL, json.dumps(
                {"reason": "fail_fast", "task": self.spec.task_name(index),
                 "time": time.time()}).encode())
            self.canceled = True            # stop this worker's next chunk at once
        return published

    def start_chunk(self, chunk: int, attempt: int) -> tuple[int, int, str | None]:
        """Hand a chunk to the task process (or, past the retry limit, fail it at once)."""
        if attempt > self.spec.worker_retries:
            tasks = self.spec.chunk_tasks(chunk)
            why = (f"the worker running this task was lost {attempt} times "
                   f"(worker_retries={self.spec.worker_retries})")
            self.publish(chunk, attempt, unfinished(tasks, [attempt] * len(tasks), C_FAILED,
                                                    "WorkerLost", why, runner.HOST, self.id))
            return chunk, attempt, None
        local = self.log_file(chunk, attempt)
        self.executor.submit("map", self.spec.call_style, self.calls(chunk, attempt), local,
                             self.store.local_path(layout.result(chunk)))
        return chunk, attempt, local

    def finish_chunk(self, running: tuple[int, int, str | None]) -> ChunkResult | PackedResult | None:
        """Wait for a started chunk's rows (with Canceled rows for what a cancel stopped)."""
        if running[2] is None:
            return None
        try:
            return self.executor.collect(self.poll)
        except ex.BatchError as err:               # no task ran: each gets a Failed row
            chunk, attempt, _ = running
            tasks = self.spec.chunk_tasks(chunk)
            return unfinished(tasks, [attempt + 1] * len(tasks), C_FAILED, "ChunkError",
                              f"the chunk could not be started: {err}", runner.HOST, self.id)
        except ex.Interrupted as stop:
            result = stop.result
            result.extend(ex.canceled_calls(stop.unrun, self.cancel_reason(), self.id))
            self.canceled = True
            return result

    def run_combiner(self, attempt: int) -> None:
        n = self.spec.chunk_count
        values = {}
        for c in range(n):
            result = self._read_result(c)
            values.update(zip(map(self.spec.task_name, result.index), result.values))
        local = self.log_file(n, attempt)
        first = attempt + 1
        try:
            result = self.executor.run("combine", "kwargs",
                                       runner.Batch([0], [values], first, first + self.spec.max_retries),
                                       local, self.poll)
        except ex.Interrupted as stop:
            result = stop.result
            result.extend(ex.canceled_calls(stop.unrun, self.cancel_reason(), self.id))
        self.publish_log(n, attempt, local)
        self.store.create_exclusive(layout.COMBINED, self.result_bytes(result))
        self.wake()

    def cancel_reason(self) -> str:
        return cancel.reason(self.store)

    def sweep_canceled(self) -> None:
        """After a cancel: give every chunk nobody live is running its Canceled rows."""
        while True:
            todo = self.claim_next()
            if todo is None or todo == DONE:
                return
            chunk, attempt = todo
            if chunk >= self.spec.chunk_count:
                return
            tasks = self.spec.chunk_tasks(chunk)
            self.publish(chunk, attempt, canceled(tasks, [attempt + 1] * len(tasks),
                                                  self.cancel_reason(), runner.HOST, self.id))

    def run(self) -> None:
        """Work until the job is done or canceled. Chunks are pipelined: the next chunk is
        claimed and handed to the task process before the finished one is published."""
        try:
            running = None
            while True:
                if running is None:
                    if not self.poll():
                        self.sweep_canceled()
                        return
                    if self.seq == 0:
                        self.beat(force=True)   # before any claim: a claim's owner that dies
                    todo = self.claim_next()    # is then known by its process at once
                    if todo == DONE:
                        return
                    if todo is not None and todo[0] < self.spec.chunk_count:
                        running = self.start_chunk(*todo)
                    if todo is None:
                        time.sleep(self.poll_seconds)   # chunks held by live workers: wait to help
                        continue
                    if running is None:
                        self.run_combiner(todo[1])
                        continue
                result = self.finish_chunk(running)
                following = None
                failing_fast = self.spec.fail_fast and result is not None and result.failed() is not None
                if result is not None and not self.canceled and not failing_fast:
                    todo = self.claim_next(combiner=False)  # that runs once this chunk is out
                    if todo not in (None, DONE):
                        following = self.start_chunk(*todo)
                if result is not None:
                    chunk, attempt, local = running
                    self.publish_log(chunk, attempt, local)   # first: a reader that sees the
                    self.publish(chunk, attempt, result)      # result finds the output too
                if self.canceled:
                    self.sweep_canceled()
                    return
                running = following
        except ex.Terminated:
            self.canceled = True
            self.sweep_canceled()
        finally:
            self.executor.close()
            try:
                self.store.once().delete(layout.heartbeat(self.id))
            except OSError:
                pass                        # the store is gone: the heartbeat goes stale


def work(store_uri: str, processes: int = 1, functions: dict[str, Callable] | None = None) -> None:
    """Run `processes` workers on this job (forked, sharing the loaded function) and wait."""
    store = open_store(store_uri)
    spec = JobSpec.from_json(store.get(layout.SPEC))
    functions = functions or load_functions(store, spec)
    if processes <= 1:
        ex.install_sigterm()
        Worker(store, spec, functions).run()
        return
    pids = start_workers(store_uri, functions, processes, detach=False, stderr_fd=2)
    forward = lambda signum, frame: [_signal(p, signum) for p in pids]
    signal.signal(signal.SIGTERM, forward)
    failed = 0
    for pid in pids:
        while True:
            try:
                failed += os.waitpid(pid, 0)[1] != 0
                break
            except ChildProcessError:
                break
            except InterruptedError:
                continue
    if failed:
        raise SystemExit(f"{failed} of {processes} worker processes failed (their errors are above)")


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


_detached: set[int] = set()      # detached workers this process forked and has not reaped


def reap_detached() -> None:
    """Collect the exit status of detached workers that ended, so none stays a zombie
    (called at each launch and while waiting; process_alive counts zombies as gone)."""
    for pid in list(_detached):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _detached.discard(pid)


def start_workers(store_uri: str, functions: dict[str, Callable] | None, count: int,
                  detach: bool, stderr_fd: int | None = None, wake_fd: int | None = None,
                  gate: tuple[int | None, int | None] = (None, None),
                  spec: JobSpec | None = None) -> list[int]:
    """Fork `count` workers for the job and return their pids. Detached workers each
    start a session of their own (so each leads the process group that `killpg` stops
    with its tasks, and no terminal signal reaches them) and outlive the caller, which
    reaps them when it next launches or waits. Detached workers write their own errors to
    `stderr_fd` (opened by the caller, so no worker depends on a path). Workers write a byte to `wake_fd` (a
    non-blocking pipe) whenever they publish a result. With a `gate` pipe (read end,
    write end) and the job's `spec`, workers start their task process and then wait for
    a byte on the gate before they take work; the gate closed without one stops them."""
    if detach:
        reap_detached()
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            _worker_main(store_uri, functions, stderr_fd, detach, wake_fd, gate, spec)
        pids.append(pid)
    if detach:
        _detached.update(pids)
        _wait_for_sessions(pids)
    return pids


def _wait_for_sessions(pids: list[int], timeout: float = 10.0) -> None:
    """Return once each detached worker leads its own process group (setsid is the first
    thing it does): before that, killpg cannot reach it, and a cancel() right after the
    launch would miss a worker that then runs beside the resumed job's."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if os.getpgid(pid) == pid:
                    break
            except ProcessLookupError:
                break
            time.sleep(0.0005)


def _worker_main(store_uri: str, functions: dict[str, Callable] | None,
                 stderr_fd: int | None, detach: bool, wake_fd: int | None = None,
                 gate: tuple[int | None, int | None] = (None, None),
                 spec: JobSpec | None = None) -> None:
    """The body of a forked worker process; never returns."""
    code = 0
    try:
        if detach:
            os.setsid()
        gate_r, gate_w = gate
        if gate_w is not None:
            os.close(gate_w)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _redirect_stdio(stderr_fd)
        ex.install_sigterm()
        worker = Worker(open_store(store_uri), spec, functions, wake_fd=wake_fd)
        if gate_r is not None:
            worker.executor.start()         # while the caller writes the job directory
            go = os.read(gate_r, 1)
            os.close(gate_r)
            if not go:
                return                      # the job was not written: nothing to do
        worker.run()
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _redirect_stdio(stderr_fd: int | None) -> None:
    """A detached worker reads nothing and writes its own errors to `stderr_fd`; the
    caller's sys.stdout/sys.stderr objects (a notebook's, a test's) are replaced too."""
    import io
    null = os.open(os.devnull, os.O_RDWR)
    err = null if stderr_fd is None else stderr_fd
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(err, 2)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m deploy.worker", description=__doc__)
    parser.add_argument("store_uri", help="the job directory, e.g. file:///path or hdfs://...")
    parser.add_argument("--processes", type=int, default=1, help="worker processes to run")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    work(args.store_uri, args.processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
