"""The `deploy` command: run a function over a parameter file, and manage jobs and environments.

Exit codes: 0 success (all tasks completed), 1 a task failed or the job did not complete,
2 usage error (bad arguments, unknown job or environment, unreadable file).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Callable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_INDEX = re.compile(r"-?[0-9]+")
_LINE_BREAKS = re.compile("\\s*[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+\\s*")   # as str.splitlines


class UsageError(Exception):
    """Bad command-line input: printed without a traceback, exit 2."""


# -- loading what the user names ---------------------------------------------------------

def load_callable(ref: str) -> Callable:
    """'path/to/file.py:func' or 'package.module:func' (or ':Class.method') -> the callable."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(f"bad function reference {ref!r}: use FILE.py:FUNC or module:FUNC")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise UsageError(f"bad function name {attr!r} in {ref!r}: use FILE.py:FUNC or module:FUNC")
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _load_file(target)
    else:
        module = _import_module(target)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except Exception:               # AttributeError, or whatever a module __getattr__ raises
            raise UsageError(f"{target} has no function {attr!r}") from None
    if not callable(obj):
        kind = type(obj).__name__
        raise UsageError(f"{target}:{attr} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, "
                         "not a function")
    return obj


def _load_file(target: str) -> Any:
    """Run a user's .py file as a module that workers get by value (they need not find it)."""
    path = Path(os.path.abspath(os.path.expanduser(target)))
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"no such file: {target}") from None
    except (OSError, ValueError) as exc:      # a loop of links, a name too long, a NUL byte
        raise UsageError(f"cannot use {target!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"{target} is not a Python file")
    name = "deploy_user_" + "".join(c if c.isalnum() else "_" for c in path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)      # so that it can import its neighbours
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:        # whatever the user's module raises, SystemExit too
        sys.modules.pop(name, None)
        if added:
            sys.path.remove(folder)
        raise UsageError(f"cannot load {target}: {_describe(exc, str(path))}") from None
    import cloudpickle
    cloudpickle.register_pickle_by_value(module)
    return module


def _import_module(target: str) -> Any:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(target)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise UsageError(f"cannot import module {target!r}: {_describe(exc, None)}") from None


def _describe(exc: BaseException, filename: str | None) -> str:
    """'TypeError: ... (line 3)': what a user's module raised as it loaded, where in it."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) while loading"
    where = ""
    if filename and not isinstance(exc, SyntaxError):
        import traceback
        lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
        where = f" (line {lines[-1]})" if lines else ""
    try:
        text = str(exc)
    except Exception:
        text = "(its message cannot be shown)"
    return f"{type(exc).__name__}: {text}{where}"


def load_params(path: str) -> list[dict]:
    """A JSON list of objects, JSON Lines (.jsonl/.ndjson), or CSV with a header row."""
    from .param_files import ParamFileError, read
    try:
        return read(path)
    except ParamFileError as exc:
        raise UsageError(str(exc)) from None


def _job(ref: str):
    import deploy
    from .errors import JobNotFound
    try:
        return deploy.jobs[int(ref)] if _INDEX.fullmatch(ref) else deploy.jobs[ref]
    except JobNotFound as exc:
        raise UsageError(str(exc)) from None


def _json(value: Any) -> str:
    return json.dumps(value, default=repr)


# -- commands ------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    import deploy
    from .environments.registry import environments
    from .errors import EnvironmentNotFound
    params = load_params(args.params)
    fn = load_callable(args.function)
    combiner = load_callable(args.combiner) if args.combiner else None
    env = None
    if args.env:
        try:
            env = environments[args.env]
        except EnvironmentNotFound as exc:
            raise UsageError(str(exc)) from None
        except (ValueError, TypeError, ImportError) as exc:     # a saved entry it cannot rebuild
            raise UsageError(f"cannot use environment {args.env!r}: {exc}") from None
        if args.detach and env.needs_client:
            raise UsageError(f"environment {args.env!r} relays its jobs through this process, which "
                             "--detach would end: give it a shared store (or do not detach)")
    options = {k: v for k, v in (("max_retries", args.max_retries), ("task_timeout", args.task_timeout),
                                 ("chunk_size", args.chunk_size), ("fail_fast", args.fail_fast or None),
                                 ("max_concurrent_tasks", args.max_concurrent_tasks),
                                 ("cpu", args.cpu), ("memory_gb", args.memory_gb),
                                 ("gpu", args.gpu)) if v is not None}
    try:
        job = deploy.map_job.create(fn, params, name=args.name, environment=env,
                                    combiner_function=combiner, **options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.detach:
        print(job.name)
        return EXIT_OK
    print(f"job {job.name}: {job.spec.task_count} tasks on {job.spec.environment['name']}",
          file=sys.stderr)
    try:
        status = job.wait(stream=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        job.cancel()
        print(f"\ncanceled job {job.name}", file=sys.stderr)
        return 130
    _print_results(job)
    print(job)
    return EXIT_OK if status == "Completed" else EXIT_FAILED


def _print_results(job) -> None:
    print("results: " + _json(job.get_map_results()))
    if job.spec.has_combiner and job.get_status() == "Completed":
        print("combined: " + _json(job.get_results()))


def _write_table(job, what: str, path: str) -> None:
    """`deploy jobs metrics|results JOB --output FILE`: the table into FILE, its format by the
    extension (.parquet, .feather/.arrow, .csv); nothing is written when it cannot be whole."""
    from .jobs import tables
    write = tables.write_metrics if what == "metrics" else tables.write_results
    try:
        rows = write(job, path)
    except (tables.TableError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {rows} rows of {what} of job {job.name} to {path}")


def cmd_jobs(args: argparse.Namespace) -> int:
    import deploy
    action = args.action or "list"
    if args.output and action not in ("metrics", "results"):
        raise UsageError(f"--output goes with 'deploy jobs metrics' or 'deploy jobs results', "
                         f"not {action!r}")
    if action == "list":
        if args.refs:
            raise UsageError(f"deploy jobs list takes no arguments, got {args.refs[0]!r}")
        frame = deploy.jobs.list()
        from tabulate import tabulate
        print(tabulate(frame.values.tolist(), headers=list(frame.columns)) if len(frame) else "no jobs")
        return EXIT_OK
    if action == "rm":
        if not args.refs:
            raise UsageError("deploy jobs rm needs at least one job name or pattern")
        removed = []
        for ref in args.refs:
            if any(c in ref for c in "*?["):
                removed += deploy.jobs.delete(pattern=ref)
            else:
                removed += deploy.jobs.delete(name=_job(ref).name)
        print("\n".join(f"removed {n}" for n in removed) or "nothing matched")
        return EXIT_OK
    most = 2 if action == "logs" else 1
    if not 1 <= len(args.refs) <= most:
        raise UsageError(f"deploy jobs {action} takes a job name or index"
                         + (" and optionally a task name" if action == "logs" else "")
                         + f", got {len(args.refs)} arguments")
    job = _job(args.refs[0])
    if action == "show":
        print(job)
        error = job.get_error()
        if error:
            print("\n" + error)
    elif action == "metrics":
        if args.output:
            _write_table(job, "metrics", args.output)
            return EXIT_OK
        from .jobs.metrics import COLUMNS, to_table
        print(to_table(job.metric_rows(), columns=[c for c in COLUMNS if c != "exception_traceback"]))
    elif action == "results":
        if args.output:
            _write_table(job, "results", args.output)
        else:
            _print_results(job)
        return EXIT_OK if job.get_status() == "Completed" else EXIT_FAILED
    elif action == "logs":
        try:
            sys.stdout.write(job.get_logs(args.refs[1] if len(args.refs) > 1 else None))
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None
    elif action == "cancel":
        job.cancel()
        print(f"{job.name}: {job.get_status()}")
    elif action == "resume":
        from .errors import JobError
        try:
            job.resume()
        except JobError as exc:
            raise UsageError(str(exc)) from None
        print(f"{job.name}: resumed")
    return EXIT_OK


def cmd_envs(args: argparse.Namespace) -> int:
    import deploy
    from .errors import EnvironmentNotFound
    action = args.action or "list"
    try:
        if action == "list":
            if args.rest:
                raise UsageError(f"deploy envs list takes no arguments, got {args.rest[0]!r}")
            frame = deploy.environments.list()
            from tabulate import tabulate
            print(tabulate(frame.values.tolist(), headers=list(frame.columns))
                  if len(frame) else "no saved environments")
        elif action == "show":
            print(json.dumps(deploy.environments[_one(args, "show")].to_dict(), indent=2))
        elif action == "rm":
            deploy.environments.delete(_one(args, "rm"))
            print(f"removed {args.rest[0]}")
        elif action == "stop":     # release what it holds (a cluster's instances); keep it saved
            deploy.environments[_one(args, "stop")].stop()
            print(f"stopped {args.rest[0]}")
    except EnvironmentNotFound as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


def cmd_envs_create(args: argparse.Namespace) -> int:
    """Save the environment a backend's `deploy envs create KIND` parser describes."""
    try:
        env = args.create(args)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(f"saved {env!r}: {env.num_workers()} workers")
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted."""
    from .dashboard import serve
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: use 0-65535")
    try:
        serve(args.host, args.port)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _one(args: argparse.Namespace, action: str) -> str:
    if len(args.rest) != 1:
        raise UsageError(f"deploy envs {action} takes one environment name")
    return args.rest[0]


# -- parser --------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deploy", description="Run a function over many parameter sets in parallel.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"deploy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run FUNC over a parameter file and wait for it")
    run.add_argument("function", help="FILE.py:FUNC or module:FUNC")
    run.add_argument("--params", required=True, help="JSON list of objects, JSON Lines, CSV, Parquet or Feather/Arrow")
    run.add_argument("--env", help="a saved environment's name (default: LocalAsync)")
    run.add_argument("--combiner", help="FILE.py:FUNC or module:FUNC, called with **{task: result}")
    run.add_argument("--name", help="job name (default: FUNC-TIMESTAMP)")
    run.add_argument("--detach", action="store_true", help="print the job name and return at once")
    run.add_argument("--max-retries", type=int)
    run.add_argument("--task-timeout", type=float)
    run.add_argument("--chunk-size", type=int)
    run.add_argument("--max-concurrent-tasks", type=int)
    run.add_argument("--fail-fast", action="store_true")
    run.add_argument("--cpu", type=float, help="cores each task needs")
    run.add_argument("--memory-gb", type=float, help="memory each task may use (GB); more fails it")
    run.add_argument("--gpu", type=int, help="GPUs each task needs")
    run.set_defaults(handler=cmd_run)

    jobs = sub.add_parser("jobs", help="list / show / metrics / results / logs / cancel / resume / rm")
    jobs.add_argument("action", nargs="?", choices=["list", "show", "metrics", "results", "logs",
                                                    "cancel", "resume", "rm"])
    jobs.add_argument("refs", nargs="*", help="job name or index (logs: then a task name)")
    jobs.add_argument("--output", "-o", metavar="FILE", help="metrics, results: write the table to "
                      "FILE (.parquet, .feather/.arrow or .csv) instead of printing it")
    jobs.set_defaults(handler=cmd_jobs)

    envs = sub.add_parser("envs", help="list / show / rm / stop / create saved environments")
    envs_sub = envs.add_subparsers(dest="action", parser_class=_Parser)
    for action in ("list", "show", "rm", "stop"):
        p = envs_sub.add_parser(action)
        p.add_argument("rest", nargs="*")
        p.set_defaults(handler=cmd_envs)
    create = envs_sub.add_parser("create", help="save a new environment")
    kinds = create.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    _add_backend_parsers(kinds)
    envs.set_defaults(handler=cmd_envs, rest=[])

    dashboard = sub.add_parser("dashboard", help="serve a live web view of jobs (deploy[dashboard])")
    dashboard.add_argument("--port", type=int, default=8765, help="default 8765; 0: any free port")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to bind (default 127.0.0.1: this machine only)")
    dashboard.set_defaults(handler=cmd_dashboard)
    return parser


def _add_backend_parsers(kinds: Any) -> None:
    """`deploy envs create KIND`: each backend folder's `cli` module adds its own parsers
    (`add_parsers(kinds)`; each parser sets `create=` to a function of the parsed
    arguments that saves the environment and returns it), so a new backend needs no change
    here."""
    from .environments.kinds import backend_package, kinds as known
    done = set()
    for kind in known():
        package = backend_package(kind)
        if package in done:
            continue
        done.add(package)
        try:
            module = importlib.import_module(f"{package}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.cli":
                raise
            continue                    # a backend without a command line
        module.add_parsers(kinds)
    for parser in kinds.choices.values():
        parser.set_defaults(handler=cmd_envs_create)


def main(argv: list[str] | None = None) -> int:
    """Run the command in `argv` (default: sys.argv[1:]); the exit code."""
    from .errors import ConfigError, DeployError, EnvironmentNotFound, JobNotFound
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:       # --help, --version
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        return args.handler(args)
    except (UsageError, ConfigError, JobNotFound, EnvironmentNotFound) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except DeployError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except OSError as exc:              # the disk, the network: not the user's input
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", EXIT_FAILED)


def _fail(message: str, code: int) -> int:
    if code == EXIT_USAGE:              # one line, whatever the message held
        message = _LINE_BREAKS.sub(" ", message).strip()
    print(f"deploy: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
