"""The submission of a YARN application whose ApplicationMaster is Hadoop's DistributedShell.

What DistributedShell's own (Java) Client does, as data for the ResourceManager REST API:
the AM runs `shellCommands` (a file in `DataOutputStream.writeUTF` format) in N containers
of the asked size, each as `bash -c "<command> 1>stdout 2>stderr"`, and finishes SUCCEEDED
when all exit 0. Its class ships with Hadoop and is on every node's
yarn.application.classpath in an Apache Hadoop install, or comes from a jar on HDFS.
"""
from __future__ import annotations

import struct
from typing import Any

AM_CLASS = "org.apache.hadoop.yarn.applications.distributedshell.ApplicationMaster"
COMMANDS_FILE = "shellCommands"
AM_JAR = "AppMaster.jar"
# the usual yarn.application.classpath of a Linux install, when the RM does not say
DEFAULT_CLASSPATH = [
    "$HADOOP_CONF_DIR", "$HADOOP_COMMON_HOME/share/hadoop/common/*",
    "$HADOOP_COMMON_HOME/share/hadoop/common/lib/*", "$HADOOP_HDFS_HOME/share/hadoop/hdfs/*",
    "$HADOOP_HDFS_HOME/share/hadoop/hdfs/lib/*", "$HADOOP_YARN_HOME/share/hadoop/yarn/*",
    "$HADOOP_YARN_HOME/share/hadoop/yarn/lib/*"]


def write_utf(text: str) -> bytes:
    """Java's DataOutputStream.writeUTF: 2-byte big-endian length, then modified UTF-8."""
    out = bytearray()
    for ch in text:
        c = ord(ch)
        if 0 < c < 0x80:
            out.append(c)
        elif c < 0x800:                       # NUL too, as C0 80
            out += bytes([0xC0 | (c >> 6), 0x80 | (c & 0x3F)])
        elif c < 0x10000:
            out += bytes([0xE0 | (c >> 12), 0x80 | ((c >> 6) & 0x3F), 0x80 | (c & 0x3F)])
        else:                                 # a surrogate pair, 3 bytes each half
            c -= 0x10000
            for s in (0xD800 | (c >> 10), 0xDC00 | (c & 0x3FF)):
                out += bytes([0xE0 | (s >> 12), 0x80 | ((s >> 6) & 0x3F), 0x80 | (s & 0x3F)])
    if len(out) > 0xFFFF:
        raise ValueError(f"the container command is {len(out)} bytes; DistributedShell takes 65535")
    return struct.pack(">H", len(out)) + bytes(out)


def check_command(command: str) -> str:
    """The AM runs the command inside `bash -c "..."`: it must not hold a double quote."""
    if '"' in command:
        raise ValueError("a DistributedShell command cannot contain a double quote")
    return command


def local_resource(uri: str, status: dict[str, Any]) -> dict[str, Any]:
    """A LocalResource for an HDFS file: size and timestamp must be HDFS's exactly, or the
    NodeManager refuses it ('changed on src filesystem')."""
    return {"resource": uri, "type": "FILE", "visibility": "APPLICATION",
            "size": status["length"], "timestamp": status["modificationTime"]}


def am_command(*, num_containers: int, container_memory: int, container_vcores: int,
               home_uri: str, staging_name: str, am_heap_mb: int, add_opens: bool,
               shell_env: dict[str, str] | None = None, container_gpus: int = 0) -> str:
    """The AM's command line (NodeManager placeholders {{X}}, <LOG_DIR>, <ADD_OPENS>)."""
    args = ["{{JAVA_HOME}}/bin/java", f"-Xmx{am_heap_mb}m"]
    if add_opens:
        args.append("<ADD_OPENS>")
    args += [AM_CLASS, "--container_memory", str(container_memory),
             "--container_vcores", str(container_vcores), "--num_containers", str(num_containers),
             "--priority", "0", "--appname", staging_name, "--homedir", home_uri]
    if container_gpus:
        args += ["--container_resources", f"yarn.io/gpu={container_gpus}"]
    for key, value in (shell_env or {}).items():
        if any(c.isspace() for c in key + value):
            raise ValueError(f"container environment {key}={value!r}: no spaces allowed")
        args += ["--shell_env", f"{key}={value}"]
    return " ".join(args + ["1><LOG_DIR>/AppMaster.stdout", "2><LOG_DIR>/AppMaster.stderr"])


def submission(*, app_id: str, name: str, queue: str | None, am_memory: int,
               resources: dict[str, dict[str, Any]], classpath: list[str], command: str,
               tags: list[str], app_type: str = "deploy") -> dict[str, Any]:
    """The body of POST /ws/v1/cluster/apps for a DistributedShell application."""
    environment = {
        "CLASSPATH": "<CPS>".join(["{{CLASSPATH}}", "./*"] + list(classpath)),
        # the AM reads these unconditionally (a NullPointerException when absent)
        "DISTRIBUTEDSHELLSCRIPTLOCATION": "", "DISTRIBUTEDSHELLSCRIPTTIMESTAMP": "0",
        "DISTRIBUTEDSHELLSCRIPTLEN": "0"}
    body: dict[str, Any] = {
        "application-id": app_id, "application-name": name, "application-type": app_type,
        "max-app-attempts": 1, "resource": {"memory": am_memory, "vCores": 1},
        "am-container-spec": {
            "local-resources": {"entry": [{"key": k, "value": v} for k, v in resources.items()]},
            "environment": {"entry": [{"key": k, "value": v} for k, v in environment.items()]},
            "commands": {"command": command}},
        "application-tags": {"tag": list(tags)}}
    if queue:
        body["queue"] = queue
    return body
