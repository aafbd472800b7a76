"""Reading a Hadoop client configuration directory (core-, hdfs-, yarn-site.xml).

Only what a pure-HTTP client needs: the default filesystem, the NameNodes' WebHDFS
addresses and the ResourceManagers' web addresses, high-availability pairs included.
Shared by the HDFS store and the Hadoop environment; standard library only.
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

SITE_FILES = ("core-site.xml", "hdfs-site.xml", "yarn-site.xml")
NAMENODE_HTTP_PORT, NAMENODE_HTTPS_PORT = 9870, 9871
RM_HTTP_PORT, RM_HTTPS_PORT = 8088, 8090
_VAR = re.compile(r"\$\{([^}$\s]+)\}")


class HadoopConfError(ValueError):
    """The configuration directory is missing, unreadable, or lacks an address."""


def read_conf(conf_dir: str | os.PathLike) -> dict[str, str]:
    """The properties of the directory's *-site.xml files, ${var} references expanded."""
    folder = Path(os.path.expanduser(str(conf_dir)))
    if not folder.is_dir():
        raise HadoopConfError(f"hadoop_conf_dir {str(conf_dir)!r} is not a directory")
    props: dict[str, str] = {}
    found = False
    for name in SITE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        found = True
        try:
            root = ElementTree.parse(path).getroot()
        except ElementTree.ParseError as exc:
            raise HadoopConfError(f"{path}: not valid XML: {exc}") from None
        for prop in root.iter("property"):
            key, value = prop.findtext("name"), prop.findtext("value")
            if key and value is not None:
                props[key.strip()] = value.strip()
    if not found:
        raise HadoopConfError(f"hadoop_conf_dir {str(folder)!r} has none of {', '.join(SITE_FILES)}")
    return {k: _expand(v, props) for k, v in props.items()}


def _expand(value: str, props: dict[str, str], depth: int = 0) -> str:
    """Hadoop's variable expansion: ${name} from the configuration, ${env.NAME} from the environment."""
    def one(match: re.Match) -> str:
        name = match.group(1)
        if name.startswith("env."):
            return os.environ.get(name[4:], match.group(0))
        return props.get(name, match.group(0))
    expanded = _VAR.sub(one, value)
    return _expand(expanded, props, depth + 1) if expanded != value and depth < 20 else expanded


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _host_port(address: str, default_host: str | None, default_port: int) -> str:
    """'host:port' from an address that may bind all interfaces or lack its port."""
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    if host in ("", "0.0.0.0", "[::]") and default_host:
        host = default_host
    return f"{host}:{port or default_port}"


def default_fs(conf: dict[str, str]) -> str | None:
    """fs.defaultFS ('hdfs://authority'), or None when it is not HDFS."""
    value = conf.get("fs.defaultFS") or conf.get("fs.default.name")
    return value.rstrip("/") if value and value.startswith("hdfs://") else None


def namenode_web_urls(conf: dict[str, str], authority: str | None = None) -> list[str]:
    """WebHDFS base URLs ('http://host:port') of the NameNodes serving `authority`
    (default: fs.defaultFS's), every NameNode of an HA nameservice included."""
    if authority is None:
        fs = default_fs(conf)
        if fs is None:
            raise HadoopConfError("the configuration names no HDFS fs.defaultFS")
        authority = fs[len("hdfs://"):]
    https = conf.get("dfs.http.policy", "HTTP_ONLY").upper() == "HTTPS_ONLY"
    key, port, scheme = (("dfs.namenode.https-address", NAMENODE_HTTPS_PORT, "https") if https
                         else ("dfs.namenode.http-address", NAMENODE_HTTP_PORT, "http"))
    host = authority.rpartition(":")[0] if ":" in authority else authority
    if authority in _split(conf.get("dfs.nameservices")):
        ids = _split(conf.get(f"dfs.ha.namenodes.{authority}"))
        if ids:
            urls = []
            for nn in ids:
                address = conf.get(f"{key}.{authority}.{nn}")
                if not address:
                    raise HadoopConfError(f"nameservice {authority!r} lists NameNode {nn!r} but "
                                          f"the configuration has no {key}.{authority}.{nn}")
                urls.append(f"{scheme}://{_host_port(address, None, port)}")
            return urls
        address = conf.get(f"{key}.{authority}") or conf.get(key)
        if not address:
            raise HadoopConfError(f"no {key} for nameservice {authority!r}")
        return [f"{scheme}://{_host_port(address, None, port)}"]
    address = conf.get(key)
    return [f"{scheme}://{_host_port(address, host, port) if address else f'{host}:{port}'}"]


def resourcemanager_web_urls(conf: dict[str, str]) -> list[str]:
    """Web (REST) base URLs of the ResourceManagers, both of an HA pair."""
    https = conf.get("yarn.http.policy", "HTTP_ONLY").upper() == "HTTPS_ONLY"
    key, port, scheme = (("yarn.resourcemanager.webapp.https.address", RM_HTTPS_PORT, "https")
                         if https else ("yarn.resourcemanager.webapp.address", RM_HTTP_PORT, "http"))
    if conf.get("yarn.resourcemanager.ha.enabled", "false").lower() == "true":
        ids = _split(conf.get("yarn.resourcemanager.ha.rm-ids"))
        if not ids:
            raise HadoopConfError("yarn.resourcemanager.ha.enabled is true but "
                                  "yarn.resourcemanager.ha.rm-ids is empty")
        urls = []
        for rm in ids:
            host = conf.get(f"yarn.resourcemanager.hostname.{rm}")
            address = conf.get(f"{key}.{rm}")
            if not address and not host:
                raise HadoopConfError(f"ResourceManager {rm!r}: neither {key}.{rm} nor "
                                      f"yarn.resourcemanager.hostname.{rm} is set")
            urls.append(f"{scheme}://{_host_port(address, host, port) if address else f'{host}:{port}'}")
        return urls
    host = conf.get("yarn.resourcemanager.hostname")
    address = conf.get(key)
    if address:
        return [f"{scheme}://{_host_port(address, host, port)}"]
    if host:
        return [f"{scheme}://{host}:{port}"]
    raise HadoopConfError(f"the configuration names no ResourceManager ({key} or "
                          "yarn.resourcemanager.hostname)")


def conf_dir_from_env() -> str | None:
    """$HADOOP_CONF_DIR, or None when it is unset or not a directory."""
    value = os.environ.get("HADOOP_CONF_DIR")
    return value if value and os.path.isdir(value) else None
