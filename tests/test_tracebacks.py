"""A failed task's traceback names the user's file, line and source text, also when the
function travelled by value to a process (a host) that lacks the file."""
from __future__ import annotations

import json
import linecache
import os
import pickle
import subprocess
import sys
import textwrap

import cloudpickle
import pytest

import deploy
from conftest import run_python
from deploy.environment import LocalAsync
from deploy.environments import by_value
from deploy.jobdir import source
from deploy.map_job import pickled_size

MODULE = textwrap.dedent("""\
    import os


    class Scaler:
        def scale(self, v):
            return v * 2


    def add(x, y):
        helper = lambda v: Scaler().scale(v)
        return helper(x) + y
""")


def write_module(tmp_path, name):
    folder = tmp_path / "userland"
    folder.mkdir()
    path = folder / f"{name}.py"
    path.write_text(MODULE)
    return str(path)


def assert_names_source(tb, path):
    assert f'File "{path}", line 11, in add' in tb, tb
    assert "return helper(x) + y" in tb
    assert f'File "{path}", line 10, in <lambda>' in tb
    assert f'File "{path}", line 6, in scale' in tb and "return v * 2" in tb
    assert "<dynamic-code>" not in tb


def test_function_pickled_by_value_keeps_its_file_and_source_after_the_file_is_gone(tmp_path):
    """Pickled through Environment.serialize (registered by value, as `deploy run` does)
    and through by_value.dumps (as SSH and Hadoop do); the file is then removed and a new
    process runs the jobs on LocalAsync and Local."""
    path = write_module(tmp_path, "userland_tb")
    blobs = tmp_path / "blobs"
    run_python(f"""
        import pickle, sys
        import cloudpickle
        sys.path.insert(0, {os.path.dirname(path)!r})
        import userland_tb
        from deploy.environment import LocalAsync
        from deploy.environments import by_value
        plain = by_value.dumps(userland_tb.add)          # finds the module outside site-packages
        cloudpickle.register_pickle_by_value(userland_tb)
        registered = LocalAsync().serialize(userland_tb.add)
        pickle.dump([plain, registered], open({str(blobs)!r}, "wb"))
    """)
    os.remove(path)
    out = run_python(f"""
        import json, pickle
        import deploy
        from deploy.environment import Local, LocalAsync
        tracebacks = []
        for blob in pickle.load(open({str(blobs)!r}, "rb")):
            fn = pickle.loads(blob)
            for env in (LocalAsync(num_workers=1), Local()):
                job = deploy.map_job.create(fn, [{{"x": 1, "y": 2}}, {{"x": None, "y": 1}}],
                                            environment=env)
                assert job.wait(timeout=60) == "Failed"
                assert job.get_map_results() == [4, None]
                tracebacks.append(job.get_metrics().exception_traceback.iloc[1])
        print(json.dumps(tracebacks))
    """)
    tracebacks = json.loads(out.stdout)
    assert len(tracebacks) == 4
    for tb in tracebacks:
        assert_names_source(tb, path)
        assert "TypeError" in tb


def test_unpickling_registers_the_source_in_linecache_by_itself(tmp_path):
    path = write_module(tmp_path, "userland_lc")
    blob_file = tmp_path / "blob"
    run_python(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(path)!r})
        import userland_lc
        from deploy.environments import by_value
        open({str(blob_file)!r}, "wb").write(by_value.dumps(userland_lc.add))
    """)
    blob = blob_file.read_bytes()
    os.remove(path)
    linecache.cache.pop(path, None)
    fn = pickle.loads(blob)
    assert fn.__code__.co_filename == path
    linecache.checkcache()                       # the entry has no mtime: it stays
    assert linecache.getline(path, 11) == "    return helper(x) + y\n"
    linecache.cache.pop(path, None)


def test_sizes_and_files_without_source(tmp_path):
    """pickled_size measures what serialize writes; code whose file has no text (exec'd
    code) travels with its name and no source."""
    namespace: dict = {"__name__": "made_up"}
    exec(compile("def f(a):\n    return 1 / a\n", "<made-up>", "exec"), namespace)
    fn = namespace["f"]
    blob = LocalAsync().serialize(fn)
    assert len(blob) == pickled_size(fn)
    assert fn.__code__.co_filename == "<made-up>"
    again = pickle.loads(blob)
    assert again.__code__.co_filename == "<made-up>" and "<made-up>" not in linecache.cache
    try:
        again(0)
    except ZeroDivisionError as exc:
        assert exc.__traceback__.tb_next.tb_frame.f_code.co_filename == "<made-up>"


def test_source_is_shipped_once_per_file_and_capped(tmp_path, monkeypatch):
    path = write_module(tmp_path, "userland_cap")
    sys.path.insert(0, os.path.dirname(path))
    try:
        import userland_cap
        cloudpickle.register_pickle_by_value(userland_cap)
        try:
            both = source.dumps([userland_cap.add, userland_cap.Scaler])
            assert both.count(b"return helper(x) + y") == 1
            monkeypatch.setattr(source, "MAX_SOURCE_CHARS", 10)
            capped = by_value.dumps(userland_cap.add)
            assert b"return helper(x) + y" not in capped
        finally:
            cloudpickle.unregister_pickle_by_value(userland_cap)
    finally:
        sys.path.remove(os.path.dirname(path))
        sys.modules.pop("userland_cap", None)
    fn = pickle.loads(capped)
    assert fn.__code__.co_filename == path


@pytest.mark.ssh
def test_ssh_hosts_without_the_file_show_its_source(ssh_hosts, tmp_path, monkeypatch):
    """The module lives under this test's private tmp dir, which the hosts' users cannot
    read: the lines in the traceback can only have come with the pickle."""
    from deploy.environments.ssh.cluster import SshCluster
    path = write_module(tmp_path, "userland_ssh")
    monkeypatch.syspath_prepend(os.path.dirname(path))
    import userland_ssh
    env = SshCluster("tb", ["host1"], ssh_config=str(ssh_hosts.ssh_config_path))
    try:
        job = deploy.map_job.create(userland_ssh.add, [{"x": 1, "y": 2}, {"x": None, "y": 1}],
                                    environment=env)
        assert job.wait(timeout=120) == "Failed"
        assert job.get_map_results() == [4, None]
        row = job.get_metrics().iloc[1]
        assert row.exception == "TypeError"
        assert_names_source(row.exception_traceback, path)
        host_user = ssh_hosts[0].user
        assert subprocess.run(["runuser", "-u", host_user, "--", "cat", path],
                              capture_output=True).returncode != 0   # the host cannot read it
    finally:
        env.stop()
        sys.modules.pop("userland_ssh", None)
