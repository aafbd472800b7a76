"""`deploy dashboard`: a live web view of jobs and environments (the extra `deploy[dashboard]`).

Served from the job directories and the registry; read-only except cancel and resume;
bound to 127.0.0.1 unless told otherwise. Nothing is imported until `serve` is called.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import sys

INSTALL_HINT = "the dashboard needs starlette and uvicorn: pip install deploy[dashboard]"


def serve(host: str = "127.0.0.1", port: int = 8765, quiet: bool = True) -> None:
    """Serve the dashboard at http://host:port until interrupted (port 0: any free port;
    the address is printed once the socket listens). `quiet`: only the server's warnings."""
    try:
        import uvicorn
        from .app import create_app
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(exc.errno, f"port {port} on {host} is in use (another dashboard?); "
                                     "choose another with --port") from None
        raise
    sock.listen(128)
    bound_port = sock.getsockname()[1]
    app = create_app(host, bound_port)
    shown = f"[{host}]" if ":" in host else host
    print(f"deploy dashboard: http://{shown}:{bound_port}/", flush=True)
    if not _loopback(host):
        print(f"deploy dashboard: warning: bound to {host}, reachable from other machines; it "
              "has no login (anyone who reaches it sees your jobs)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning" if quiet else "info", access_log=False,
                            lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
