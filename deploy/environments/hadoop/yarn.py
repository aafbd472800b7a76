"""A client of the YARN ResourceManager REST API (/ws/v1/cluster): submit, watch and kill
applications over plain HTTP, trying each ResourceManager of an HA pair in turn.

Simple (non-Kerberos) authentication: the user travels as `?user.name=`, as with WebHDFS.
"""
from __future__ import annotations

from typing import Any

from ...errors import DeployError

LIVE_STATES = ("NEW", "NEW_SAVING", "SUBMITTED", "ACCEPTED", "RUNNING")
FINAL_STATES = ("FINISHED", "FAILED", "KILLED")
TIMEOUT = (10.0, 60.0)          # seconds to connect, to read


class YarnError(DeployError):
    """The ResourceManager could not be reached, or refused or failed an application."""


def _remote_message(response: Any) -> str:
    """The RemoteException message of an error answer, else its text."""
    try:
        body = response.json()
        remote = body.get("RemoteException") or {}
        if remote:
            return f"{remote.get('exception', 'error')}: {remote.get('message', '')}".strip()
    except ValueError:
        pass
    return (response.text or response.reason or "").strip()[:1000]


class ResourceManager:
    """The REST endpoints deploy uses, against the first ResourceManager that answers."""

    def __init__(self, urls: list[str], user: str) -> None:
        if not urls:
            raise ValueError("no ResourceManager address")
        self.urls = [u.rstrip("/") for u in urls]
        self.user = user
        self._session: Any = None

    @property
    def session(self) -> Any:
        if self._session is None:
            import requests
            self._session = requests.Session()
            self._session.headers.update({"Accept": "application/json"})
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def request(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        """Send to each ResourceManager until one answers (a standby redirects to the active
        one); YarnError naming the addresses when none does, or with YARN's message."""
        import requests
        params = {"user.name": self.user, **kwargs.pop("params", {})}
        errors = []
        for i, base in enumerate(self.urls):
            try:
                response = self.session.request(method, base + path, params=params,
                                                timeout=TIMEOUT, **kwargs)
            except requests.exceptions.RequestException as exc:
                errors.append(f"{base}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                continue
            if "standby" in response.text[:300].lower() and response.status_code != 200:
                errors.append(f"{base}: standby")
                continue
            if i:
                self.urls.insert(0, self.urls.pop(i))      # the active one first from now on
            if response.status_code not in ok:
                raise YarnError(f"ResourceManager {base} answered {method} {path} with HTTP "
                                f"{response.status_code}: {_remote_message(response)}")
            return response
        raise YarnError(f"cannot reach the YARN ResourceManager at {', '.join(self.urls)}: "
                        + "; ".join(errors))

    # -- cluster ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """clusterInfo: state, hadoopVersion, ..."""
        return self.request("GET", "/ws/v1/cluster/info").json()["clusterInfo"]

    def conf(self, name: str) -> str | None:
        """One property of the ResourceManager's effective configuration (None if hidden)."""
        try:
            answer = self.request("GET", "/conf", params={"name": name}).json()
        except (YarnError, ValueError):
            return None
        return (answer.get("property") or {}).get("value")

    def queues(self) -> set[str]:
        """Every queue name the scheduler knows: short names and full paths."""
        info = self.request("GET", "/ws/v1/cluster/scheduler").json().get("scheduler", {})
        names: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for key in ("queueName", "queuePath"):
                    if isinstance(node.get(key), str):
                        names.add(node[key])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)
        walk(info)
        if (info.get("schedulerInfo") or {}).get("type") == "fifoScheduler":
            names.add("default")
        return names

    def nodes(self) -> list[dict[str, Any]]:
        """The running NodeManagers: {"name", "memory_mb", "vcores", "gpus"} each (their
        whole capacity, used or not)."""
        answer = self.request("GET", "/ws/v1/cluster/nodes", params={"states": "RUNNING"}).json()
        found = []
        for node in ((answer.get("nodes") or {}).get("node") or []):
            total = node.get("totalResource") or {}
            infos = (total.get("resourceInformations") or {}).get("resourceInformation") or []
            gpus = sum(int(i.get("value") or 0) for i in infos if i.get("name") == "yarn.io/gpu")
            found.append({
                "name": node.get("nodeHostName") or node.get("id") or "node",
                "memory_mb": int(total.get("memory") or
                                 int(node.get("availMemoryMB") or 0) + int(node.get("usedMemoryMB") or 0)),
                "vcores": int(total.get("vCores") or int(node.get("availableVirtualCores") or 0)
                              + int(node.get("usedVirtualCores") or 0)),
                "gpus": gpus})
        return found

    # -- applications -----------------------------------------------------------------

    def new_application(self) -> dict[str, Any]:
        """A new application id and the largest container the cluster grants
        ({'application-id': ..., 'maximum-resource-capability': {'memory': MB, 'vCores': n}})."""
        return self.request("POST", "/ws/v1/cluster/apps/new-application").json()

    def submit(self, body: dict[str, Any]) -> None:
        """Submit an application; YarnError with YARN's reason when it is refused."""
        try:
            self.request("POST", "/ws/v1/cluster/apps", ok=(200, 202), json=body)
        except YarnError as exc:
            raise YarnError(f"YARN refused application {body.get('application-id')}: {exc}") from None

    def app(self, app_id: str) -> dict[str, Any]:
        """The application report: state, finalStatus, diagnostics, amContainerLogs, ..."""
        return self.request("GET", f"/ws/v1/cluster/apps/{app_id}").json()["app"]

    def kill(self, app_id: str) -> None:
        """Ask YARN to kill the application (its containers get SIGTERM, then SIGKILL)."""
        self.request("PUT", f"/ws/v1/cluster/apps/{app_id}/state", ok=(200, 202),
                     json={"state": "KILLED"})
