"""The dashboard's HTTP side: a Starlette app serving a static page and a JSON API.

Read-only except cancel and resume. Those are POSTs that must carry the page's token (a
random value only a page served by this process knows) and an Origin of this server;
every request must name this server in its Host header (no DNS rebinding).
"""
from __future__ import annotations

import ipaddress
import json
import math
import secrets
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import DeployError
from . import data

STATIC = Path(__file__).parent / "static"
TOKEN_HEADER = "x-deploy-token"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",              # no clickjacking of the cancel button
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Cache-Control": "no-store",
}


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: None instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(_clean(value), default=str), status_code=status,
                    media_type="application/json")


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """Host header values this server answers to; None: any (bound to every address)."""
    if host in ("0.0.0.0", "::", ""):
        return None
    names = {host}
    try:
        if ipaddress.ip_address(host).is_loopback:
            names |= {"127.0.0.1", "localhost", "[::1]"}
    except ValueError:
        pass
    names = {f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names}
    return {f"{n}:{port}" for n in names} | ({n for n in names} if port == 80 else set())


def create_app(host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> Starlette:
    """The ASGI app for a server bound at host:port (the Host/Origin checks need both)."""
    board = data.Dashboard()
    token = token or secrets.token_urlsafe(24)
    hosts = allowed_hosts(host, port)
    page = (STATIC / "index.html").read_text().replace("{{TOKEN}}", token)

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def list_jobs(request: Request) -> Response:
        return _json({"jobs": await run_in_threadpool(board.jobs)})

    def _view(request: Request) -> data.JobView:
        return board.view(request.path_params["name"])

    async def job(request: Request) -> Response:
        view = await run_in_threadpool(_view, request)
        return _json(await run_in_threadpool(view.summary))

    async def metrics(request: Request) -> Response:
        q = request.query_params
        view = await run_in_threadpool(_view, request)
        try:
            got = await run_in_threadpool(
                view.page, q.get("sort", "task"), q.get("desc") in ("1", "true"),
                q.get("status") or None, int(q.get("offset", 0)), int(q.get("limit", 50)))
        except ValueError as exc:
            return _error(str(exc), 400)
        return _json(got)

    async def failures(request: Request) -> Response:
        q = request.query_params
        view = await run_in_threadpool(_view, request)
        try:
            offset, limit = int(q.get("offset", 0)), int(q.get("limit", 20))
        except ValueError as exc:
            return _error(str(exc), 400)
        return _json(await run_in_threadpool(view.failures, offset, limit))

    async def task(request: Request) -> Response:
        view = await run_in_threadpool(_view, request)
        try:
            index = int(request.path_params["index"])
        except ValueError:
            return _error("a task is named by its index", 400)
        try:
            return _json(await run_in_threadpool(view.task, index))
        except KeyError as exc:
            return _error(str(exc.args[0]), 404)

    async def timeline(request: Request) -> Response:
        view = await run_in_threadpool(_view, request)
        got = await run_in_threadpool(view.timeline)
        return _json(got.to_dict())

    async def timeline_png(request: Request) -> Response:
        view = await run_in_threadpool(_view, request)
        try:
            png = await run_in_threadpool(view.timeline_png)
        except ImportError as exc:
            return PlainTextResponse(str(exc), status_code=501)
        return Response(png, media_type="image/png")

    async def control(request: Request) -> Response:
        view = await run_in_threadpool(_view, request)
        action = request.path_params["action"]
        try:
            got = await run_in_threadpool(view.cancel if action == "cancel" else view.resume)
        except DeployError as exc:
            return _error(str(exc), 409)
        return _json(got)

    async def environments(request: Request) -> Response:
        return _json({"environments": await run_in_threadpool(data.environments)})

    routes = [
        Route("/", index),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/jobs", list_jobs),
        Route("/api/jobs/{name}", job),
        Route("/api/jobs/{name}/metrics", metrics),
        Route("/api/jobs/{name}/failures", failures),
        Route("/api/jobs/{name}/tasks/{index}", task),
        Route("/api/jobs/{name}/timeline.json", timeline),
        Route("/api/jobs/{name}/timeline.png", timeline_png),
        Route("/api/jobs/{name}/{action:str}", control, methods=["POST"]),
        Route("/api/environments", environments),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(f"no job named {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args
                      else "not found", 404)

    async def unreadable(request: Request, exc: Exception) -> Response:
        return _error(str(exc), 409 if isinstance(exc, DeployError) else 503)

    app = Starlette(routes=routes, exception_handlers={
        KeyError: not_found, 404: not_found, DeployError: unreadable, OSError: unreadable})
    app.state.token = token
    return _Guard(app, hosts, token)


class _Guard:
    """ASGI middleware: the Host check on every request, the Origin and token checks on
    every request that may change something, and security headers on every answer."""

    def __init__(self, app: Any, hosts: set[str] | None, token: str) -> None:
        self.app, self.hosts, self.token = app, hosts, token
        self.state = app.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        refusal = None
        if self.hosts is not None and host not in self.hosts:
            refusal = f"Host {host!r} is not this dashboard"
        elif scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            action = scope["path"].rsplit("/", 1)[-1]
            if origin != f"http://{host}":
                refusal = f"cross-origin request refused (Origin {origin!r})"
            elif not secrets.compare_digest(headers.get(TOKEN_HEADER, ""), self.token):
                refusal = "missing or wrong dashboard token"
            elif scope["method"] != "POST" or action not in ("cancel", "resume"):
                refusal = "the dashboard changes nothing but cancel and resume"
        if refusal is not None:
            await _error(refusal, 403)(scope, receive, _with_headers(send))
            return
        await self.app(scope, receive, _with_headers(send))


def _with_headers(send: Any) -> Any:
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or [])
            have = {k.lower() for k, _ in headers}
            headers += [(name.lower().encode(), value.encode())
                        for name, value in SECURITY_HEADERS.items()
                        if name.lower().encode() not in have]
            message["headers"] = headers
        await send(message)
    return wrapped
