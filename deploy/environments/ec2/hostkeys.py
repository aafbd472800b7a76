"""Host keys learnt through a trusted channel, never from the first connection.

The client generates each instance's SSH host key, hands the private half to the instance
in its cloud-init user data (`ssh_keys`, which cloud-init installs before sshd starts) and
pins the public half in the cluster's known_hosts: the key an instance offers is checked
against one the client made, so a machine in the middle cannot pass for the instance.
The user data is cloud-config written as JSON (a subset of YAML that cloud-init reads).
"""
from __future__ import annotations

import json
import os
from typing import Any


def generate() -> tuple[str, str]:
    """A new ed25519 host key: (private key in OpenSSH format, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


def user_data(private: str, public: str, extra: dict[str, Any] | None = None) -> str:
    """cloud-config installing the host key (and removing the image's own keys)."""
    config = {"ssh_deletekeys": True, "ssh_genkeytypes": [],
              "ssh_keys": {"ed25519_private": private, "ed25519_public": public}, **(extra or {})}
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


def host_keys_in(data: str) -> dict[str, str]:
    """The `ssh_keys` of a user data text this module wrote ({} when it has none)."""
    if not data.startswith("#cloud-config"):
        return {}
    try:
        return dict(json.loads(data.split("\n", 1)[1]).get("ssh_keys") or {})
    except (ValueError, IndexError, AttributeError):
        return {}


def write_known_hosts(path: str, keys: dict[str, str], port: int = 22) -> None:
    """known_hosts pinning each address to its public key line (replacing the file whole)."""
    lines = []
    for address, public in sorted(keys.items()):
        name = address if port == 22 else f"[{address}]:{port}"
        kind, blob = public.split()[:2]
        lines.append(f"{name} {kind} {blob}\n")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def client_key(path: str) -> str:
    """The cluster's SSH login key at `path` (0600), made when missing; its public line."""
    from cryptography.hazmat.primitives import serialization
    if not os.path.exists(path):
        private, public = generate()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private)
        return public
    with open(path, "rb") as f:
        key = serialization.load_ssh_private_key(f.read(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


__all__ = ["generate", "user_data", "host_keys_in", "write_known_hosts", "client_key"]
