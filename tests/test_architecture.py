"""The layout keeps its promises (README "Architecture"): read from the source, imports
inside functions included, those under `if TYPE_CHECKING:` left out (they never run)."""
from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deploy")


def _modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = "deploy" + path[len(ROOT):-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


MODULES = _modules()
# one folder per backend: every package directly under deploy/environments
BACKENDS = tuple(sorted(m for m, path in MODULES.items() if m.startswith("deploy.environments.")
                        and m.count(".") == 2 and path.endswith("__init__.py")))
# a backend may build on another's transport: EC2 is a source of hosts reached over SSH
BUILDS_ON = {"deploy.environments.ec2": ("deploy.environments.ssh",)}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _runtime_nodes(tree: ast.AST):
    """Every node except what sits under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) \
                == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(module: str) -> set[str]:
    """The deploy modules `module` imports, at the top or inside functions."""
    path = MODULES[module]
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package
                for _ in range(node.level - 1):
                    up = up.rpartition(".")[0]
                base = up + ("." + node.module if node.module else "")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_no_import_cycles():
    cycles, index, low, stack, on = [], {}, {}, [], set()

    def visit(v: str) -> None:           # Tarjan: strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))
    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_job_directory_contract_imports_nothing_else_of_deploy():
    assert {m: sorted(GRAPH[m]) for m in GRAPH if m.startswith("deploy.jobdir")
            and not all(i.startswith("deploy.jobdir") for i in GRAPH[m])} == {}


def test_the_worker_imports_only_the_contract_and_the_stores():
    allowed = ("deploy.worker", "deploy.jobdir", "deploy.store", "deploy.errors", "deploy.config")
    assert {m: sorted(i for i in GRAPH[m] if not i.startswith(allowed)) for m in GRAPH
            if m.startswith("deploy.worker") and not all(i.startswith(allowed) for i in GRAPH[m])} == {}


def test_no_module_outside_a_backend_folder_imports_it():
    """The core reaches backends by kind name (the deploy.environments entry points)."""
    crossing = [(m, i) for m in GRAPH for i in GRAPH[m] for b in BACKENDS
                if _within(i, b) and not _within(m, b)
                and not any(_within(m, user) for user, bases in BUILDS_ON.items() if b in bases)]
    assert crossing == []


def test_backend_packages_load_nothing_until_used():
    """An SSH agent and a YARN container import their backend's package without the
    client's libraries: the packages' __init__ import no module."""
    assert "deploy.environments.ssh" in BACKENDS
    for backend in BACKENDS:
        if backend != "deploy.environments.local":
            assert GRAPH[backend] == set(), backend


def test_every_kind_round_trips_through_its_declared_settings(tmp_path):
    """An environment's settings are its constructor's arguments (validated, normalised):
    from_settings(settings()) rebuilds an equal environment for every built-in kind."""
    from deploy.environments.kinds import kind_class
    examples = {
        "local": {},
        "local-async": {"num_workers": 3},
        "ssh": {"hosts": ["alice@10.0.0.7:2222", "gpu2"], "workers_per_host": 2,
                "additional_packages": ["numpy"], "store": "s3://bucket/jobs",
                "host_key_policy": "accept-new", "ssh_config": None, "forward_env": ["TOKEN"]},
        "hadoop": {"dist_path": "/user/me/deploy", "webhdfs_url": "http://nn:9870",
                   "resourcemanager_url": "http://rm:8088", "num_containers": 3,
                   "additional_packages": ["pandas"], "am_memory": 768},
        "ray": {"address": "10.0.0.2:6379", "store": "s3://bucket/jobs",
                "additional_packages": ["numpy"], "timeout": 20.0},
    }
    for kind, arguments in examples.items():
        cls = kind_class(kind)
        env = cls("example", **arguments)
        settings = env.settings()
        assert {k: settings[k] for k in arguments} == arguments, kind
        again = cls.from_settings("example", settings)
        assert again.to_dict() == env.to_dict(), kind
        assert again.settings() == settings, kind


def test_the_executors_worker_side_imports_only_the_contract():
    """deploy.executor.remote is unpickled in every task process of an executor's job:
    it imports nothing of deploy beyond the worker and the contract, so no client code comes along."""
    assert "deploy.executor.remote" in GRAPH
    assert {i for i in GRAPH["deploy.executor.remote"]
            if not _within(i, "deploy.jobdir") and not _within(i, "deploy.worker")} == set()
