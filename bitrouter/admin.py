"""The admin API: health, dynamic routes, reload, metrics, the event stream and `/metrics`.

Each handler takes the Server and an `Incoming` and returns a `Reply`, like the request
path's (proxy.py); errors are OpenAI-shaped (the HTTP layer, app.py, says so). Every
route but /health needs an admin token (/metrics: what server.metrics_auth names).
"""

import json
import logging
import os
import signal
import time

from bitrouter import Error, boundary, config, workers
from bitrouter.boundary import redact
from bitrouter.protocols import sse
from bitrouter.proxy import HttpError, Incoming, Reply, authenticate, parse_json
from bitrouter.router import describe, dynamic_route

log = logging.getLogger("bitrouter")

EVENT_BATCH_SECONDS = 0.05  # /admin/events: how long a wake-up waits for more events to send along


def health(srv, incoming: Incoming) -> Reply:
    """`GET /health`: open to all, for load balancers and `bitrouter status`."""
    return _json({"status": "ok", "uptime_seconds": int(time.time() - srv.started)})


def routes(srv, incoming: Incoming) -> Reply:
    """`GET /admin/routes`: every alias and dynamic route with its endpoints."""
    authenticate(srv, incoming, "admin")
    return _json({"routes": srv.runtime.router.listing()})


def add_route(srv, incoming: Incoming) -> Reply:
    """`POST /admin/routes`: add or replace a dynamic route, shared with every instance."""
    authenticate(srv, incoming, "admin")
    rt = srv.runtime
    try:
        spec = parse_json(incoming.body)
        route = dynamic_route(spec, rt.providers, rt.cfg.routing)
        boundary.check_name(route.name, "route name")
        for endpoint in route.endpoints:
            boundary.check_name(endpoint.model_id, "model_id")
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    _shared(lambda: srv.store.save_route(route.name, spec))  # so every instance serves it
    srv.dynamic[route.name] = route
    log.info("dynamic route %s set: %s", route.name, ", ".join(e.label for e in route.endpoints))
    return _json({"status": "ok", "route": describe(route)})


def remove_route(srv, incoming: Incoming) -> Reply:
    """`DELETE /admin/routes/<name>`: 404 unless such a dynamic route exists."""
    authenticate(srv, incoming, "admin")
    name = incoming.args["name"]
    stored = _shared(lambda: srv.store.delete_route(name))
    if srv.dynamic.pop(name, None) is None and not stored:
        raise HttpError(404, f"no dynamic route named {name!r}")
    return _json({"status": "ok", "model": name, "removed": True})


def reload(srv, incoming: Incoming) -> Reply:
    """`POST /admin/reload`: re-read the configuration; 422 (the old one serving) if it does not load."""
    authenticate(srv, incoming, "admin")
    try:
        notes = srv.reload("POST /admin/reload")
    except config.ConfigError as exc:  # the request was fine; the configuration on disk is not
        raise HttpError(422, f"configuration not reloaded (the previous one keeps serving): {exc}") from None
    if workers.role():  # the supervisor forwards it to every worker
        os.kill(os.getppid(), signal.SIGHUP)
    return _json({"status": "ok", "notes": notes})


def metrics(srv, incoming: Incoming) -> Reply:
    """`GET /admin/metrics[?recent=N]`: the dashboard's snapshot (docs/tui.md)."""
    authenticate(srv, incoming, "admin")
    return _json(workers.combined(srv, srv.dashboard(_count_param(incoming, "recent", 100))))


def events(srv, incoming: Incoming) -> Reply:
    """`GET /admin/events`: request events as SSE, with keep-alive comments; `?brief=1`: each
    event only says what happened, without the request (docs/tui.md)."""
    authenticate(srv, incoming, "admin")
    sub = srv.metrics.subscribe(brief=incoming.query.get("brief") == "1")
    # connection: close, so draining never waits on an idle keep-alive
    return Reply(200, _event_frames(srv, sub), {"cache-control": "no-cache", "connection": "close"},
                 sse.CONTENT_TYPE)


def prometheus(srv, incoming: Incoming) -> Reply:
    """`GET /metrics`: needs the scope server.metrics_auth names (admin by default, or api, or open)."""
    from bitrouter import prometheus as exposition

    needs = srv.runtime.cfg.server["metrics_auth"]
    if needs != "open":
        authenticate(srv, incoming, needs)
    body, content_type = exposition.exposition(srv, incoming.headers.get("accept", ""))
    return Reply(200, body, {}, content_type)


# (method, path, handler): the routes app.py serves besides the protocols' own.
ROUTES = (
    ("GET", "/health", health),
    ("GET", "/admin/routes", routes),
    ("POST", "/admin/routes", add_route),
    ("DELETE", "/admin/routes/<name:path>", remove_route),
    ("POST", "/admin/reload", reload),
    ("GET", "/admin/metrics", metrics),
    ("GET", "/admin/events", events),
    ("GET", "/metrics", prometheus),
)


def _event_frames(srv, sub):
    """Frames for one subscriber until the client leaves or the server stops."""
    dropped = 0
    try:
        yield b": bitrouter events\n\n"
        while True:
            batch = sub.wait(srv.runtime.cfg.server["ping_interval"])
            if batch and not sub.closed:  # gather what follows: one write per batch, not per event
                time.sleep(EVENT_BATCH_SECONDS)
                batch += sub.wait(0)
            if not batch:
                if sub.closed:
                    break
                yield b": keep-alive\n\n"
                continue
            frames = []
            if sub.dropped != dropped:  # this reader fell behind: tell it to re-read the snapshot
                frames.append(sse.frame({"type": "dropped", "count": sub.dropped - dropped}, "dropped"))
                dropped = sub.dropped
            secrets = srv.runtime.secrets  # a reload may change them
            for event in batch:
                error = event["request"]["error"] if "request" in event else ""
                if error:
                    event = {**event, "request": {**event["request"], "error": redact(error, secrets)}}
                frames.append(f"id: {event['seq']}\n".encode() + sse.frame(event, event["type"]))
            yield b"".join(frames)
    finally:
        srv.metrics.unsubscribe(sub)


def _shared(change):
    """Apply a change to the state instances share; 503 while the database is unreachable."""
    try:
        return change()
    except Error as exc:
        raise HttpError(503, f"cannot store the change: {exc}") from None


def _count_param(incoming: Incoming, name: str, default: int) -> int:
    value = incoming.query.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 9):
        raise HttpError(400, f"query parameter {name!r} must be a non-negative integer below 10^9")
    return int(value)


def _json(data) -> Reply:
    return Reply(200, json.dumps(data))
