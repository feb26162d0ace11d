"""The HTTP server: bottle routes on gevent's WSGI server, and the request pipeline.

A request flows: read + authenticate here -> inbound protocol decodes (or keeps the raw
body for pass-through) -> router picks endpoints and fails over -> upstream protocol
encodes, calls, parses -> inbound protocol encodes the reply or stream -> client.
"""

if __name__ == "__main__":  # `python -m bitrouter.server`: patch before anything imports ssl/socket
    from gevent import monkey
    monkey.patch_all()

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import socket
import time

import bottle
from gevent import GreenletExit
from gevent import pywsgi
from gevent.pywsgi import WSGIHandler

from bitrouter import Error, StatusError, access, boundary, cluster, config, daemon, guardrails, protocols, store, workers
from bitrouter import hints
from bitrouter.boundary import redact
from bitrouter.metrics import Metrics, Record, cost_micro_usd, dashboard
from bitrouter.protocols import ProtocolError, Usage, sse
from bitrouter.router import Health, Router, describe, dynamic_route
from bitrouter.upstream import Pools, UpstreamError

log = logging.getLogger("bitrouter")

JSON = "application/json"
EVENT_BATCH_SECONDS = 0.05  # /admin/events: how long a wake-up waits for more events to send along
# Base URL slips served as meant: `http://host:8787` without the /v1 an SDK expects to be
# in its base URL, and a base URL ending in /v1 that the client adds another /v1 to.
BASE_URL_SLIPS = ("/chat/completions", "/responses", "/messages", "/models")
COUNT_CACHE_SIZE = 512  # provider token counts kept, by endpoint and request body
FD_TARGET = 65536  # the open-file soft limit the server asks for (never above the hard limit)
KEEPALIVE_QUEUE = 16  # encoded chunks held per stream while its client is not reading
FD_RESERVE = 64  # file descriptors kept for the listener, log, database and such


class HttpError(StatusError):
    """An error BitRouter itself answers with, in the inbound protocol's shape."""

    def __init__(self, status: int, message: str, headers=None):
        super().__init__(message, status, headers)


class Runtime:
    """Everything built from one configuration; swapped whole on reload."""

    def __init__(self, cfg, dynamic: dict, health: Health):
        self.cfg = cfg
        self.router = Router(cfg, dynamic, health)
        self.providers = cfg.providers
        self.secrets = boundary.secrets_of(cfg)  # masked in everything that leaves the process


class Server:
    """One BitRouter server: the current runtime plus state that outlives reloads."""

    def __init__(self, home, cfg=None):
        self.home = home
        self.dynamic = {}
        self.health = Health()
        self.metrics = Metrics()
        self.sessions = guardrails.Sessions()  # per agent session: requests and spend, for its limits
        self.metrics.listeners.append(self.sessions.finished)
        self.started = time.time()
        self.counts = collections.OrderedDict()  # (endpoint label, body digest) -> provider token count
        self.mode = "foreground"  # how this process runs the server: foreground | dashboard | daemon
        self.port = None  # the port actually bound, once listening
        cfg = cfg or config.load(home)
        self.bound = _bound_settings(cfg)  # fixed for this process: a reload only reports changes
        self.pools = Pools(cfg.upstream["connect_timeout"], cfg.upstream["read_timeout"])
        self.runtime = Runtime(cfg, self.dynamic, self.health)
        self.store = store.Store(cfg.database_url, shared=True)  # closed by start's stack, after the gate
        self.gate = access.Gate(home, cfg, self.store, self.metrics)  # AUTH HOOK: refuses an open public listener
        self.app = build_app(self)

    def reload(self, source: str = "request") -> list[str]:
        """Rebuild the runtime from disk (.env, config, registry) and swap it in; returns notes.

        A configuration that does not load raises ConfigError and the old runtime keeps
        serving. Requests already running finish on the runtime they started with.
        """
        clock = time.perf_counter()
        try:
            cfg = config.load(self.home)
        except config.ConfigError as exc:
            log.error("configuration reload (%s) failed; the previous configuration keeps serving: %s",
                      source, exc)
            raise
        runtime = Runtime(cfg, self.dynamic, self.health)
        notes = []
        for key, value in _bound_settings(cfg).items():
            if value != self.bound[key]:
                notes.append(f"{key} changed to {value}; the server keeps {self.bound[key]} "
                             f"until `{hints.command('restart')}`")
        for name, route in list(self.dynamic.items()):
            gone = sorted({e.provider for e in route.endpoints if e.provider not in cfg.providers})
            if gone:  # its endpoints could no longer be called
                del self.dynamic[name]
                notes.append(f"dynamic route {name!r} is not served: provider {', '.join(gone)} no longer "
                             "exists (the route stays stored; DELETE /admin/routes removes it)")
        self.pools.set_timeouts(cfg.upstream["connect_timeout"], cfg.upstream["read_timeout"])
        self.runtime = runtime
        log.info("configuration reloaded (%s) in %.1f ms%s", source, (time.perf_counter() - clock) * 1000,
                 "".join("; " + note for note in notes))
        return notes


def _bound_settings(cfg) -> dict:
    """Settings a running server cannot change: its socket, its processes, the database it opened."""
    return {"server.listen": cfg.listen, "server.workers": cfg.server["workers"],
            "database.url": config.mask_url(cfg.database_url)}


def serve(home, cfg=None, worker_count=None) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM, then drain in-flight requests.

    With more than one worker (`worker_count`, else `server.workers`) this process
    supervises that many server processes instead (bitrouter/workers.py).
    """
    import gevent
    import gevent.event

    cfg = cfg or config.load(home)
    count = cfg.server["workers"] if worker_count is None else worker_count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise Error(f"--workers must be a whole number of processes, at least 1, got {count!r}")
    worker = workers.role()
    if count > 1 and worker is None:
        workers.supervise(home, cfg, count)
        return
    running = start(home, cfg)  # its log line says where it listens
    stop = gevent.event.Event()
    if worker:  # Ctrl-C reaches the whole process group: the supervisor alone decides
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM,) if worker else (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, stop.set)
    stop.wait()
    running.stop()


def start(home, cfg=None, mode="foreground") -> "Running":
    """Start listening in this process (gevent patched) and return the handle that stops it.

    The process first claims the home's pid file (one server per run dir), logs to
    <logs>/bitrouter.log, reloads on SIGHUP, and publishes its URL once listening.
    """
    import gevent
    from gevent.pywsgi import WSGIServer

    srv = Server(home, cfg)
    worker = workers.role()  # (index, port) under a `--workers` supervisor, which owns the pid file
    if worker:
        mode = "worker"
    elif mode == "foreground" and daemon.detached(home):
        mode = "daemon"
    srv.mode = mode
    host, port = srv.runtime.cfg.host_port
    with contextlib.ExitStack() as owned:  # released here on failure, else by Running.stop()
        claim = None if worker else owned.enter_context(daemon.pid_file(home))
        owned.enter_context(daemon.server_log(home, srv, echo=mode == "foreground"))
        try:
            address = workers.listener(host, worker[1]) if worker else (host, port)
            listener = WSGIServer(address, srv.app, log=None, error_log=log, handler_class=_Handler)
            listener.init_socket()
        except OSError as exc:
            raise Error(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        listener.in_flight = _InFlight(_connection_capacity())
        listener.srv = srv  # the handlers' timeouts come from its current configuration
        srv.connections = listener.in_flight
        if mode != "dashboard":  # the dashboard's SIGHUP is its terminal going away: it ends
            hup = gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(_reload_on_signal, srv))
            owned.callback(hup.cancel)
        listener.start()
        srv.port = listener.server_port
        url = daemon.connect_url(host, srv.port)
        if worker:
            workers.publish(srv, worker[0], owned)
        else:
            claim.publish(url, mode)
        log.info("server started (pid %d, %s) on %s", os.getpid(), mode, url)
        owned.callback(srv.store.close)
        srv.gate.start(owned)  # AUTH HOOK: logs the auth mode; closes (writes all spend) after the drain
        cluster.Sync(srv).start(owned)  # revocations and dynamic routes shared through the database
        return Running(srv, listener, owned.pop_all())


def _connection_capacity() -> int:
    """Raise the fd soft limit to the hard limit; client connections may use about half of it.

    Each client connection may hold an upstream connection too, and the log, the database
    and the listener need a few more.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard if hard != resource.RLIM_INFINITY else FD_TARGET, FD_TARGET)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    soft = FD_TARGET if soft == resource.RLIM_INFINITY else soft
    return max(16, (soft - FD_RESERVE) // 2)


def _reload_on_signal(srv: Server) -> None:
    try:
        srv.reload("SIGHUP")
    except config.ConfigError:
        pass  # logged by reload; the previous configuration keeps serving


class Running:
    """A server listening in this process; stop() drains it."""

    def __init__(self, srv: Server, listener, owned: contextlib.ExitStack):
        self.srv = srv
        self.listener = listener
        self.owned = owned  # pid file, log handlers, SIGHUP handler

    @property
    def busy(self) -> int:
        """Requests being answered right now (idle keep-alive connections do not count)."""
        return self.listener.in_flight.count

    def stop(self) -> None:
        """Stop accepting, end event streams, wait up to drain_timeout for in-flight requests."""
        clock = time.perf_counter()
        timeout = self.srv.runtime.cfg.server["drain_timeout"]
        self.listener.close()
        for handler in list(self.listener.in_flight.waiting):
            handler.hang_up()
        log.info("stopping: draining %d in-flight request(s), up to %gs", self.busy, timeout)
        self.srv.metrics.close()
        self.listener.in_flight.idle.wait(timeout)
        cut = self.busy
        self.listener.stop(timeout=0)
        self.srv.pools.close()
        log.info("server stopped; drained in %.2fs%s", time.perf_counter() - clock,
                 f"; {cut} request(s) still running at drain_timeout were cut off" if cut else "")
        self.owned.close()


def build_app(srv: Server) -> bottle.Bottle:
    """The bottle application with every route bound to one Server."""
    app = bottle.Bottle(catchall=False)
    openai = protocols.get("openai")
    responses = protocols.get("responses")
    anthropic = protocols.get("anthropic")
    google = protocols.get("google")

    @app.hook("before_request")
    def forgive_base_url():
        bottle.request.environ["PATH_INFO"] = corrected_path(bottle.request.environ.get("PATH_INFO", "/"))

    @app.get("/health")
    def health():
        return _json({"status": "ok", "uptime_seconds": int(time.time() - srv.started)})

    @app.get("/v1/models")
    def models():
        return _guard(openai, listing(srv, lambda: _json(list_models(srv.runtime))))

    @app.post("/v1/chat/completions")
    def chat():
        return relay(srv, openai)

    @app.post("/v1/responses")
    def responses_create():
        return relay(srv, responses)

    @app.post("/v1/responses/input_tokens")
    def responses_input_tokens():
        return count_tokens(srv, responses)

    @app.post("/v1/messages")
    def messages():
        return relay(srv, anthropic)

    @app.post("/v1/messages/count_tokens")
    def messages_count_tokens():
        return count_tokens(srv, anthropic)

    @app.post("/v1beta/models/<target:path>")
    @app.post("/v1/models/<target:path>")
    def gemini(target):
        model, _, action = target.rpartition(":")
        if action == "countTokens":
            return count_tokens(srv, google, model)
        if action in ("generateContent", "streamGenerateContent"):
            return relay(srv, google, model, action)
        return _error(google, 404, f"no method {action!r} here; BitRouter serves generateContent, "
                                   "streamGenerateContent and countTokens")

    @app.get("/v1beta/models")
    def gemini_models():
        return _guard(google, listing(srv, lambda: _json(google.model_list(_model_ids(srv.runtime)))))

    @app.get("/v1beta/models/<name:path>")
    def gemini_model(name):
        return _guard(google, listing(srv, lambda: _json(_gemini_model(srv.runtime, name))))

    @app.get("/admin/routes")
    def routes():
        return _admin(srv, lambda: _json({"routes": srv.runtime.router.listing()}))

    @app.post("/admin/routes")
    def add_route():
        return _admin(srv, lambda: _add_route(srv))

    @app.delete("/admin/routes/<name:path>")
    def remove_route(name):
        return _admin(srv, lambda: _remove_route(srv, name))

    @app.post("/admin/reload")
    def reload_config():
        return _admin(srv, lambda: _reload(srv))

    @app.get("/admin/metrics")
    def admin_metrics():
        return _admin(srv, lambda: _json(workers.combined(srv, dashboard(srv, _count_param("recent", 100)))))

    @app.get("/admin/events")
    def admin_events():
        return _admin(srv, lambda: _event_stream(srv))

    @app.get("/metrics")
    def prometheus_metrics():
        return _guard(openai, lambda: _prometheus(srv))

    def default_error(err):  # unknown paths and wrong methods, in the shape the path's clients parse
        path = bottle.request.path
        message = err.body or err.status_line
        if err.status_code == 404:
            message += (f" ({bottle.request.method} {path} is not served; point OpenAI and Anthropic "
                        f"clients at {_base_url(srv)}/v1, Gemini clients at {_base_url(srv)})")
        return _error(_protocol_of(path), err.status_code, message)
    app.default_error_handler = default_error
    return app


def relay(srv: Server, inbound, path_model: str | None = None, action: str | None = None):
    """Serve one inference request end to end, with failover; errors in the inbound shape."""
    clock = time.perf_counter()
    rt = srv.runtime  # requests finish on the runtime they started with, even across a reload
    record = None
    try:
        boundary.check_headers(bottle.request.environ)
        raw = read_body(rt.cfg)
        body = parse_json(raw)
        model = boundary.check_name(inbound.model_of(body, path_model))
        stream = inbound.wants_stream(body, action)
        record = srv.metrics.begin(inbound.NAME, model, stream)
        identity = authenticate(srv, "api", record)
        _guard_request(srv, rt, inbound, body, record)  # GUARDRAILS HOOK: upgoing text, session limits
        route = rt.router.resolve(model)
        record.route = route.name
        route = authorize_route(srv, identity, route, record)
        call = _Call(srv, rt, inbound, body, stream, raw)
        route = call.capable(route)
        _guard_loop(srv, rt, call, record)  # GUARDRAILS HOOK: the same tool call over and over
        answer, attempts = rt.router.dispatch(route, call.attempt)
    except Exception as exc:  # every failure becomes a protocol-shaped error, never a traceback
        status, message, headers = _classify(exc)
        if record:
            record.status, record.error = status, message
            record.attempts = exc.attempts if isinstance(exc, StatusError) else 0
            _finish(srv, rt, None, record, None, clock)
        raw = getattr(exc, "body", b"") if _same_protocol_error(exc, inbound) else b""
        return _error(inbound, status, message, headers, raw, rt.secrets)
    record.upstream, record.attempts = answer.endpoint.label, attempts
    srv.metrics.routed(record)
    bottle.response.set_header("x-bitrouter-upstream", answer.endpoint.label)
    bottle.response.set_header("x-bitrouter-attempts", str(attempts))
    if answer.request is not None and answer.request.dropped:  # hosted tools the target cannot run
        dropped = ", ".join(sorted(set(answer.request.dropped)))
        bottle.response.set_header("x-bitrouter-dropped-tools", dropped)
        log.info("%s: tools left out for %s, which cannot run them: %s", model, answer.endpoint.label, dropped)
    if stream:
        overhead = (time.perf_counter() - clock) * 1000 - call.upstream_ms
        bottle.response.set_header("x-bitrouter-overhead-ms", f"{overhead:.2f}")
        bottle.response.content_type = "text/event-stream"
        bottle.response.set_header("cache-control", "no-cache")
        body = _stream_reply(srv, rt, answer, record, clock)
        # Pass-through streams carry the upstream's own keep-alives, so pings are only added
        # to streams BitRouter encodes itself.
        ping, interval = inbound.KEEPALIVE, rt.cfg.server["ping_interval"]
        if ping and interval > 0 and answer.kind != "passthrough":
            return _keepalive(body, ping, interval)
        return body
    try:
        payload, usage = answer.finish(model)
        _checked(usage)
    except Exception as exc:  # an upstream reply of the wrong shape is the upstream's failure
        record.status, record.error = 502, f"upstream reply could not be read: {type(exc).__name__}: {exc}"
        _finish(srv, rt, answer.endpoint, record, None, clock)
        return _error(inbound, 502, record.error, secrets=rt.secrets)
    payload = _guard_reply(srv, rt, inbound, redact(payload, rt.secrets), record, usage)  # GUARDRAILS HOOK: downgoing text
    record.status = 200
    _finish(srv, rt, answer.endpoint, record, usage, clock)
    bottle.response.set_header("x-bitrouter-overhead-ms", f"{record.latency_ms - call.upstream_ms:.2f}")
    bottle.response.content_type = JSON
    return payload


def count_tokens(srv: Server, inbound, path_model: str | None = None):
    """Serve a token count: the target provider's own counter when it has one, else the estimate.

    Agents compact their context by these numbers, so the provider's tokenizer wins; its
    answers are cached per request body, and any failure falls back to the estimate.
    """
    def count():
        rt = srv.runtime
        identity = authenticate(srv, "api")
        body = read_json(rt.cfg)
        route = authorize_route(srv, identity, rt.router.resolve(boundary.check_name(inbound.model_of(body, path_model))))
        request = decoded(inbound.count_request, body)
        tokens = _provider_count(srv, rt, route, inbound, request)
        return _json(inbound.count_reply(protocols.estimate_tokens(request) if tokens is None else tokens))
    return _guard(inbound, count)


def _provider_count(srv: Server, rt: Runtime, route, inbound, request) -> int | None:
    """The first usable endpoint's own token count (cached per body), or None when it has no counter."""
    endpoint = rt.router.candidates(route)[0]
    provider = rt.providers[endpoint.provider]
    upstream = protocols.get(provider.api_protocol)
    count_url = upstream.count_url  # None for Chat Completions and mock: nothing to ask
    if count_url is None:
        return None
    payload = json.dumps(upstream.count_body(protocols.own_proofs(request, endpoint.label), endpoint.model_id)).encode()
    key = (endpoint.label, hashlib.sha256(payload).digest())
    if key in srv.counts:
        srv.counts.move_to_end(key)
        return srv.counts[key]
    headers = upstream_headers(provider, upstream, inbound, endpoint.api_key or provider.api_key)
    try:
        reply = srv.pools.send(count_url(endpoint.api_base or provider.api_base, endpoint.model_id), headers, payload)
        raw = reply.read()
        tokens = upstream.counted(json.loads(raw)) if reply.status == 200 else None
    except (UpstreamError, ValueError, KeyError, TypeError) as exc:
        log.warning("token count from %s failed, estimating instead: %s", endpoint.label, exc)
        return None
    if tokens is None:
        log.warning("token count from %s failed (HTTP %d), estimating instead", endpoint.label, reply.status)
        return None
    srv.counts[key] = tokens
    if len(srv.counts) > COUNT_CACHE_SIZE:
        srv.counts.popitem(last=False)
    return tokens


# AUTH HOOK: access control (bitrouter/access.py, docs/auth.md). The other hook lines:
# Server.__init__ creates the gate, start() hands it the stop stack, relay() passes its record, and the
# model listings go through listing().
def authenticate(srv: Server, scope: str, record: Record | None = None):
    """The caller's token claims (None when the server runs open); HttpError 401/403/503 on refusal.

    Always checked against the current runtime's configuration: a reload applies at once.
    """
    try:
        token = access.credential(bottle.request.headers, bottle.request.query)
        claims = srv.gate.authenticate(srv.runtime.cfg, token, scope)
    except Exception as exc:
        if record is not None:
            record.refused = True  # no one to bill: it writes no spend row
        if not isinstance(exc, access.AuthError):
            raise
        challenge = {"www-authenticate": 'Bearer realm="bitrouter"'} if exc.status == 401 else None
        raise HttpError(exc.status, exc.message, challenge) from None
    if record is not None and claims is not None:
        record.account, record.token_hash = claims.iss, claims.token_hash
    return claims


def authorize_route(srv: Server, identity, route, record: Record | None = None):
    """The route narrowed to the models the token allows; HttpError 403, or 402 over budget.

    With the request's record, a budgeted request holds its round until the record finishes.
    """
    try:
        return srv.gate.authorize(identity, route, record)
    except access.AuthError as exc:
        raise HttpError(exc.status, exc.message) from None


def listing(srv: Server, handler):
    """A model-listing handler that first requires an api token (the catalogue is not public)."""
    def checked():
        authenticate(srv, "api")
        return handler()
    return checked


def decoded(decode, body: dict):
    """Run a protocol decoder (or encoder); a field of the wrong type deep inside the body is the client's 400."""
    try:
        return decode(body)
    except (AttributeError, TypeError, KeyError, IndexError) as exc:
        raise ProtocolError(f"request body has a field of the wrong type or shape ({exc})") from None


def read_json(cfg) -> dict:
    """The request body as a JSON object, within the configured size limit."""
    return parse_json(read_body(cfg))


def read_body(cfg) -> bytes:
    """The raw request body, within the configured size limit."""
    limit = cfg.server["max_body_bytes"]
    environ = bottle.request.environ  # until the body is read whole, the connection closes after the reply
    length = bottle.request.content_length
    if length > limit:
        raise HttpError(413, f"request body is {length} bytes; the limit is {limit}")
    data = _read_body(environ, length if length >= 0 else limit + 1, cfg.server["body_timeout"])
    if len(data) > limit:
        raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
    environ["bitrouter.read"] = True
    return data


def parse_json(data: bytes) -> dict:
    """A request body as a JSON object; anything else is the client's 400."""
    try:
        body = boundary.load_json(data)
    except boundary.Invalid as exc:
        raise HttpError(400, str(exc)) from None
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body


def _read_body(environ, size: int, timeout: float) -> bytes:
    """Read a request body within `timeout` seconds in all; 408 if it does not arrive, 400 if malformed.

    Meanwhile the connection counts as idle: stopping hangs it up instead of waiting.
    """
    import gevent

    try:
        with environ.get("bitrouter.idle_while", contextlib.nullcontext)(), gevent.Timeout(timeout or None):
            return environ["wsgi.input"].read(size)
    except gevent.Timeout:
        raise HttpError(408, f"request body did not arrive within {timeout:g} s (server.body_timeout)") from None
    except (ValueError, OSError) as exc:  # gevent's bad chunk sizes, a reset connection
        raise HttpError(400, f"request body could not be read: {str(exc)[:200]}") from None


def list_models(rt: Runtime) -> dict:
    """OpenAI list format: aliases, dynamic routes, then provider:model for configured providers."""
    now = int(time.time())
    ids = [(r["model"], "bitrouter") for r in rt.router.listing()]
    for name in sorted(rt.providers):
        provider = rt.providers[name]
        if provider.configured:
            ids += [(f"{name}:{m}", name) for m in sorted(provider.models)]
    return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": owner}
                                       for i, owner in ids]}


# ---------------------------------------------------------------- the upstream call


class _Answer:
    """A successful upstream attempt whose body (or stream) is ready to be read."""

    def __init__(self, endpoint, upstream, inbound, kind: str, payload, request):
        self.endpoint = endpoint
        self.upstream = upstream
        self.inbound = inbound
        self.kind = kind  # passthrough | translated | mock
        self.payload = payload  # (raw, parsed) / Response / iterator of chunks or events
        self.request = request  # the unified request (None for pass-through)

    def finish(self, model: str):
        """The client's non-streamed body and the usage, from the upstream reply."""
        if self.kind == "passthrough":
            raw, data = self.payload
            if data.get(self.inbound.MODEL_FIELD, model) != model:  # name the model the client asked for
                raw = json.dumps({**data, self.inbound.MODEL_FIELD: model}).encode()
            return raw, self.inbound.usage_of(data)
        resp = self.payload if self.kind == "mock" else self.upstream.decode_response(self.payload[1])
        for part in resp.parts:
            part.signature = protocols.seal(part.signature, self.endpoint.label)
        return json.dumps(self.inbound.encode_response(resp, model, self.request)), resp.usage

    def events(self, max_frame: int = 0):
        """Unified stream events (translated and mock answers), proofs sealed with their producer;
        frames are bounded by max_frame."""
        for event in self._decoded(max_frame):
            if event.signature:
                event.signature = protocols.seal(event.signature, self.endpoint.label)
            yield event

    def _decoded(self, max_frame: int):
        if self.kind == "mock":
            yield from self.payload
            return
        parser, decoder = sse.Parser(max_frame), self.upstream.StreamDecoder()
        for chunk in self.payload:
            for event, data in parser.feed(chunk):
                yield from decoder.feed(event, data)
        for event, data in parser.close():
            yield from decoder.feed(event, data)


class _Call:
    """One client request's attempts against successive endpoints."""

    def __init__(self, srv: Server, rt: Runtime, inbound, body: dict, stream: bool, raw: bytes = b""):
        self.srv, self.rt, self.inbound, self.body, self.stream = srv, rt, inbound, body, stream
        self.raw = raw  # the body as it came, for cheap looks before anything is decoded
        self.sealed = protocols.SEAL_PREFIX.encode() in raw  # proofs BitRouter sealed on a translated turn
        self.unified = None
        self.upstream_ms = 0.0

    def attempt(self, endpoint) -> _Answer:
        """Try one endpoint; raises UpstreamError (retryable or not) on failure."""
        provider = self.rt.providers[endpoint.provider]
        upstream = protocols.get(provider.api_protocol)
        if upstream.NAME == "mock":
            request = protocols.own_proofs(self._unified(), endpoint.label)
            make = upstream.stream if self.stream else upstream.generate
            return _Answer(endpoint, upstream, self.inbound, "mock", make(request, endpoint.model_id), request)
        if upstream is self.inbound:
            kind, request = "passthrough", None
            # A sealed proof in a pass-through body was made by a provider of another
            # protocol (the conversation was translated before): it can only be dropped.
            body = self.inbound.drop_sealed(self.body) if self.sealed else self.body
            payload = self.inbound.passthrough_body(body, endpoint.model_id, self.stream)
        else:  # each endpoint sees only the reasoning proofs it produced itself
            kind, request = "translated", protocols.own_proofs(self._unified(), endpoint.label)
            payload = decoded(lambda req: upstream.encode_request(req, endpoint.model_id), request)
        base = endpoint.api_base or provider.api_base
        url = upstream.request_url(base, endpoint.model_id, self.stream)
        key = endpoint.api_key or provider.api_key
        headers = upstream_headers(provider, upstream, self.inbound, key)
        started = time.perf_counter()
        limits = self.rt.cfg.upstream
        try:
            reply = self.srv.pools.send(url, headers, _wire_json(payload))
            if reply.status >= 400:
                error = reply.error(upstream, limits["max_body_bytes"])
                secrets = self.rt.secrets  # some upstreams echo the key they refused
                error.message, error.body = redact(error.message, secrets), redact(error.body, secrets)
                raise error
            if self.stream:
                body = _primed(reply, limits["max_frame_bytes"])
            else:
                body = _parsed(reply.read(limits["max_body_bytes"]))
        finally:
            self.upstream_ms += (time.perf_counter() - started) * 1000
        return _Answer(endpoint, upstream, self.inbound, kind, body, request)

    def capable(self, route):
        """The route without endpoints whose catalog says they cannot take this request's images.

        Decoding costs time, so it only happens when such an endpoint is on the route;
        with none left the request is a clear 400 instead of an upstream's confusing one.
        """
        text_only = [e for e in route.endpoints
                     if "image" not in self.rt.providers[e.provider].models.get(e.model_id, {}).get("modalities", ["image"])]
        if not text_only or not any(p.kind == "image" for m in self._unified().messages for p in _all_parts(m)):
            return route
        usable = [e for e in route.endpoints if e not in text_only]
        if not usable:
            raise HttpError(400, f"model {route.name!r} does not accept images or files "
                                 f"({', '.join(e.label for e in text_only)} take text only)")
        return dataclasses.replace(route, endpoints=usable)

    def _unified(self):
        if self.unified is None:
            self.unified = boundary.check_fields(decoded(self.inbound.decode_request, self.body))
            self.unified.stream = self.stream  # Gemini streams by method, not by a body field
        return self.unified


def upstream_headers(provider, upstream, inbound, key: str) -> dict:
    """Auth by the provider's style, the protocol's fixed headers, and (same protocol only)
    the client headers the protocol forwards, such as Claude Code's anthropic-beta."""
    headers = {"content-type": JSON, **upstream.FIXED_HEADERS}
    if upstream is inbound:
        for name in upstream.FORWARD_HEADERS:
            value = bottle.request.headers.get(name)
            if value:
                headers[name] = value
    headers.update(AUTH_HEADERS[provider.auth](key))
    headers.update(provider.default_headers)
    return headers


AUTH_HEADERS = {
    "bearer": lambda key: {"authorization": f"Bearer {key}"},
    "x-api-key": lambda key: {"x-api-key": key},
    "x-goog-api-key": lambda key: {"x-goog-api-key": key},
}


def _all_parts(message):
    """A message's parts, including those inside tool results."""
    for part in message.parts:
        yield part
        yield from part.content


def _wire_json(payload) -> bytes:
    """A body for the upstream: strict JSON (a NaN that got this far is refused, not sent)."""
    try:
        return json.dumps(payload, allow_nan=False).encode()
    except ValueError as exc:
        raise HttpError(400, f"request has a number JSON cannot carry: {exc}") from None


def _parsed(raw: bytes) -> tuple[bytes, dict]:
    """A non-streamed upstream body with its JSON; garbage counts as an endpoint failure."""
    try:
        data = boundary.load_json(raw, "upstream reply")
    except boundary.Invalid as exc:
        raise UpstreamError(str(exc), status=502) from None
    if not isinstance(data, dict):
        raise UpstreamError("upstream returned JSON that is not an object", status=502)
    return raw, data


def _primed(reply, max_frame: int):
    """Read up to the first whole SSE frame now, so a stream that is not one can still fail over.

    An HTML page (a captive portal, a wrong base URL) or a stream that dies before its
    first frame is an endpoint failure, before anything is sent to the client.
    """
    kind = reply.headers.get("content-type", "")
    if "event-stream" not in kind:
        reply.close()
        raise UpstreamError(f"upstream answered a stream with content-type {kind[:60]!r}, "
                            "not text/event-stream", status=502)
    chunks, parser, head = reply.chunks(), sse.Parser(max_frame), []
    try:
        while not parser.frames(head[-1] if head else b""):
            chunk = next(chunks, b"")
            if not chunk:
                raise UpstreamError("upstream closed the stream before its first event", kind="connect")
            head.append(chunk)
    except sse.FrameTooLarge as exc:
        reply.close()
        raise UpstreamError(str(exc), status=502) from None

    def rest():
        try:
            yield from head
            yield from chunks
        finally:
            chunks.close()
    return rest()


def _stream_reply(srv: Server, rt: Runtime, answer: _Answer, record: Record, clock: float):
    """The streamed body: relayed frames, or re-encoded events; failures end it in-band."""
    inbound, secrets = answer.inbound, rt.secrets
    usage, complete, encoder = None, False, None
    # GUARDRAILS HOOK: downgoing frames pass through the guard, which holds back only what may
    # still be completing a match; a block ends the stream with the protocol's in-band error.
    guard = rt.cfg.guardrails.stream_guard(inbound.NAME, inbound.stream_error,
                                           lambda hits: _report(srv, record, hits))
    guarded = guard.feed if guard else (lambda out: out)
    try:
        if answer.kind == "passthrough":
            # Only whole frames are relayed, each naming the client's model: a cut leaves no
            # half frame for the error to join.
            parser = sse.Parser(rt.cfg.upstream["max_frame_bytes"])
            for chunk in answer.payload:
                frames = parser.frames(chunk)
                for _raw, event, data in frames:
                    if data:
                        usage = _running_usage(usage, _checked(inbound.stream_usage(event, data)))
                        complete = complete or inbound.is_final(event, data)
                out = frames and guarded(redact(b"".join(inbound.relay_frame(event, raw, record.model)
                                                         for raw, event, _data in frames), secrets))
                if out:
                    yield out
                if guard and guard.blocked:
                    break
        else:
            encoder = inbound.StreamEncoder(record.model, answer.request)
            for event in answer.events(rt.cfg.upstream["max_frame_bytes"]):
                if event.kind == "usage":
                    usage = _checked(event.usage)
                complete = complete or event.kind == "finish"
                out = encoder.event(event)
                out = out and guarded(redact(out, secrets))
                if out:
                    yield out
                if guard and guard.blocked:
                    break
            if complete and not (guard and guard.blocked):
                yield guarded(redact(encoder.finish_stream(), secrets))
        if guard:
            yield guard.close()
            if guard.blocked:
                record.status, record.error = 400, guard.blocked
                return
        if not complete:  # the connection closed cleanly but the protocol's ending never came
            raise UpstreamError("upstream stream ended before it was complete")
        record.status = 200
    except (GeneratorExit, GreenletExit):  # the client went away
        record.status, record.error = 499, "client disconnected"
        raise
    except Exception as exc:  # whatever broke (a cut, a frame of the wrong shape), the stream ends well-formed
        message = str(exc) if isinstance(exc, (UpstreamError, ProtocolError, ValueError)) \
            else f"upstream stream could not be read: {type(exc).__name__}"
        record.status, record.error = 502, redact(message, secrets)
        log.warning("stream from %s broke: %s", answer.endpoint.label, record.error)
        if guard and not guard.blocked:
            yield guard.close()
        # An encoder with stream state (Responses numbers its events) ends the stream itself.
        yield (getattr(encoder, "error", None) or inbound.stream_error)(502, record.error)
    finally:
        _close(answer.payload)
        _finish(srv, rt, answer.endpoint, record, usage, clock)


def _keepalive(body, frame: bytes, interval: float):
    """Relay a streamed body, adding `frame` whenever nothing was sent for `interval` seconds.

    The body runs in its own greenlet feeding a queue, so a silent upstream read cannot
    hold the keep-alive back; only protocols with a keep-alive frame pay for the hand-off.
    The queue is short: while the client does not read, the upstream is not read either.
    """
    import gevent.queue

    queue = gevent.queue.Queue(KEEPALIVE_QUEUE)

    def pump():
        try:
            for chunk in body:
                queue.put(chunk)
            queue.put(None)
        except Exception as exc:  # re-raised in the request's own greenlet (a kill, GreenletExit, just ends it)
            queue.put(exc)

    worker = gevent.spawn(pump)
    try:
        while True:
            try:
                item = queue.get(timeout=interval)
            except gevent.queue.Empty:
                yield frame
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        worker.kill()  # a client that left stops the upstream read too


def _checked(usage):
    """Usage from an upstream reply, refused (Invalid) unless every count is an integer."""
    return usage if usage is None else boundary.check_fields(usage, "upstream usage")


def _running_usage(prior, found):
    """Streams report running totals, some in pieces (Anthropic: input first, output last)."""
    if found is None or prior is None:
        return found or prior
    return Usage(**{name: max(count, getattr(found, name)) for name, count in vars(prior).items()})


def _finish(srv: Server, rt: Runtime, endpoint, record: Record, usage, clock: float) -> None:
    """Close the request's record: latency, usage and cost from the answering endpoint's prices.

    endpoint and usage are None when the request failed before any endpoint answered.
    """
    record.latency_ms = (time.perf_counter() - clock) * 1000
    if usage is not None:
        record.usage = usage
        info = rt.providers[endpoint.provider].models.get(endpoint.model_id) or {}
        record.cost_micro_usd = cost_micro_usd(usage, info.get("pricing") or {})
    srv.metrics.finish(record)


# GUARDRAILS HOOK: the guardrails (bitrouter/guardrails.py, docs/guardrails.md) on the request
# path; relay() and _stream_reply() call these, every hit is counted, logged and announced.


def _guard_request(srv: Server, rt: Runtime, inbound, body: dict, record: Record) -> None:
    """Redact or refuse the request's text (upgoing), and refuse a session over its limits."""
    policy = rt.cfg.guardrails
    hits = []
    try:
        policy.walk(body, inbound.NAME, "request", guardrails.UPGOING, hits)
    except guardrails.GuardrailError as exc:
        raise HttpError(400, str(exc)) from None
    finally:
        _report(srv, record, hits)
    if policy.loop["enabled"]:
        record.session = guardrails.session_of(body, bottle.request.headers)
        refusal = srv.sessions.admit(record.session, policy.loop)
        if refusal:
            _report(srv, record, [guardrails.Hit("session_limit", guardrails.UPGOING, "block", "session")])
            raise HttpError(400, refusal)


def _guard_loop(srv: Server, rt: Runtime, call: "_Call", record: Record) -> None:
    """Warn about, or stop, an agent repeating the same tool call (or getting the same tool error)."""
    loop = rt.cfg.guardrails.loop
    thresholds = [n for n in (loop["warn_after"], loop["stop_after"]) if n]
    if not loop["enabled"] or not thresholds:
        return
    # A loop needs that many tool calls in the history: with fewer, the body is not even decoded.
    if sum(call.raw.count(mark) for mark in call.inbound.TOOL_CALL_MARKS) < min(thresholds):
        return
    try:
        messages = call._unified().messages
    except ProtocolError:  # a pass-through body our decoder cannot read: the upstream may still take it
        return
    verdict = guardrails.loop_verdict(messages, loop)
    if verdict:
        action, message = verdict
        _report(srv, record, [guardrails.Hit("tool_loop", guardrails.UPGOING, action, "messages")])
        if action == "block":
            raise HttpError(400, message)
        log.warning("request %d: %s", record.id, message)


def _guard_reply(srv: Server, rt: Runtime, inbound, payload, record: Record, usage):
    """A non-streamed reply with its text checked (downgoing); a block becomes an in-band refusal."""
    policy = rt.cfg.guardrails
    if not policy.rules[guardrails.DOWNGOING]:
        return payload
    data, hits = json.loads(payload), []
    try:
        changed = policy.walk(data, inbound.NAME, "reply", guardrails.DOWNGOING, hits)
    except guardrails.GuardrailError as exc:
        record.error = str(exc)
        refusal = protocols.Response(id="bitrouter-guardrail", model=record.model,
                                     parts=[protocols.Part("text", text=str(exc))],
                                     finish_reason="content_filter", usage=usage)
        data, changed = inbound.encode_response(refusal, record.model), True
    finally:
        _report(srv, record, hits)
    return json.dumps(data) if changed else payload


def _report(srv: Server, record: Record, hits: list) -> None:
    """Count, log and announce guardrail hits; the matched text is never part of them."""
    if not hits:
        return
    srv.metrics.guardrail(record, hits)
    for hit in hits:
        log.warning("guardrail %s: %s (%s, %s, %d match%s) on request %d", hit.action, hit.pattern,
                    hit.direction, hit.where, hit.count, "" if hit.count == 1 else "es", record.id)


def _close(payload) -> None:
    close = getattr(payload, "close", None)
    if close:
        close()


# ---------------------------------------------------------------- admin routes


def _add_route(srv: Server):
    rt = srv.runtime
    try:
        spec = read_json(rt.cfg)
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


def _remove_route(srv: Server, name: str):
    stored = _shared(lambda: srv.store.delete_route(name))
    if srv.dynamic.pop(name, None) is None and not stored:
        raise HttpError(404, f"no dynamic route named {name!r}")
    return _json({"status": "ok", "model": name, "removed": True})


def _shared(change):
    """Apply a change to the state instances share; 503 while the database is unreachable."""
    try:
        return change()
    except Error as exc:
        raise HttpError(503, f"cannot store the change: {exc}") from None


def _reload(srv: Server):
    try:
        notes = srv.reload("POST /admin/reload")
    except config.ConfigError as exc:  # the request was fine; the configuration on disk is not
        raise HttpError(422, f"configuration not reloaded (the previous one keeps serving): {exc}") from None
    if workers.role():  # the supervisor forwards it to every worker
        os.kill(os.getppid(), signal.SIGHUP)
    return _json({"status": "ok", "notes": notes})


def _event_stream(srv: Server):
    """`/admin/events`: request events as SSE, with keep-alive comments (docs/tui.md)."""
    sub = srv.metrics.subscribe()
    bottle.response.content_type = "text/event-stream"
    bottle.response.set_header("cache-control", "no-cache")
    bottle.response.set_header("connection", "close")  # so draining never waits on an idle keep-alive
    return _events(srv, sub)


def _events(srv: Server, sub):
    """Frames for one subscriber until the client leaves or the server stops."""
    dropped = 0
    try:
        yield b": bitrouter events\n\n"
        while True:
            events = sub.wait(srv.runtime.cfg.server["ping_interval"])
            if events and not sub.closed:  # gather what follows: one write per batch, not per event
                time.sleep(EVENT_BATCH_SECONDS)
                events += sub.wait(0)
            if not events:
                if sub.closed:
                    break
                yield b": keep-alive\n\n"
                continue
            frames = []
            if sub.dropped != dropped:  # this reader fell behind: tell it to re-read the snapshot
                frames.append(sse.frame({"type": "dropped", "count": sub.dropped - dropped}, "dropped"))
                dropped = sub.dropped
            secrets = srv.runtime.secrets  # a reload may change them
            for event in events:
                error = event["request"]["error"]
                if error:
                    event = {**event, "request": {**event["request"], "error": redact(error, secrets)}}
                frames.append(f"id: {event['seq']}\n".encode() + sse.frame(event, event["type"]))
            yield b"".join(frames)
    finally:
        srv.metrics.unsubscribe(sub)


def _prometheus(srv: Server):
    """`/metrics`: needs the scope server.metrics_auth names (admin by default, or api, or open)."""
    from bitrouter import prometheus
    needs = srv.runtime.cfg.server["metrics_auth"]
    if needs != "open":
        authenticate(srv, needs)
    body, content_type = prometheus.exposition(srv, bottle.request.headers.get("accept", ""))
    bottle.response.content_type = content_type
    return body


def corrected_path(path: str) -> str:
    """The path a client meant when its base URL lacked /v1 or had it twice."""
    while path.startswith("/v1/v1/"):
        path = path[3:]
    if any(path == slip or path.startswith(slip + "/") for slip in BASE_URL_SLIPS):
        path = "/v1" + path
    return path


def _base_url(srv: Server) -> str:
    host, port = srv.runtime.cfg.host_port
    return daemon.connect_url(host, srv.port or port)


def _count_param(name: str, default: int) -> int:
    value = bottle.request.query.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 9):
        raise HttpError(400, f"query parameter {name!r} must be a non-negative integer below 10^9")
    return int(value)


# ---------------------------------------------------------------- errors and helpers


def _admin(srv: Server, handler):
    """An admin route: needs admin scope; errors in OpenAI's shape."""
    def checked():
        authenticate(srv, "admin")
        return handler()
    return _guard(protocols.get("openai"), checked)


def _guard(inbound, handler):
    """Run a non-inference handler, turning exceptions into protocol-shaped errors."""
    try:
        boundary.check_headers(bottle.request.environ)
        return handler()
    except Exception as exc:
        status, message, headers = _classify(exc)
        return _error(inbound, status, message, headers)


def _classify(exc) -> tuple[int, str, dict]:
    """Status, message and extra headers for any exception on the request path (see StatusError)."""
    if isinstance(exc, StatusError):
        return exc.reply()
    log.exception("internal error")
    return 500, f"internal error: {type(exc).__name__}", {}


def _same_protocol_error(exc, inbound) -> bool:
    return isinstance(exc, UpstreamError) and exc.protocol is inbound


def _error(inbound, status: int, message: str, headers=None, raw: bytes = b"", secrets=()):
    """An error response in the inbound protocol's shape (never HTML, never a traceback, no key)."""
    body = raw or json.dumps(inbound.error_body(status, str(message)))
    resp = bottle.HTTPResponse(status=status, body=redact(body, secrets))
    resp.content_type = JSON
    for name, value in (headers or {}).items():
        resp.set_header(name, value)
    return resp


def _protocol_of(path: str):
    """The protocol whose clients use a path, for errors raised before any endpoint answers."""
    name = "anthropic" if path.startswith("/v1/messages") else \
        "google" if path.startswith("/v1beta/") or (path.startswith("/v1/models/") and ":" in path) else "openai"
    return protocols.get(name)


def _model_ids(rt: Runtime) -> list:
    return [m["id"] for m in list_models(rt)["data"]]


def _gemini_model(rt: Runtime, name: str) -> dict:
    name = name.removeprefix("models/")
    if name not in _model_ids(rt):
        raise HttpError(404, f"model {name!r} is not served here")
    return protocols.get("google").model_entry(name)


def _json(data) -> str:
    bottle.response.content_type = JSON
    return json.dumps(data)


class _Handler(WSGIHandler):
    """gevent's handler with BitRouter's connection rules.

    TCP_NODELAY, so small replies are not held back by Nagle; an idle timeout on every
    socket read and write (a client that stops reading is cut off, so it cannot hold an
    upstream); a deadline for the request headers; errors gevent answers itself (a bad
    request line, a 414, bad chunking) in JSON; and a connection whose body was not read
    whole is closed after its reply instead of being read to the end.
    """

    def __init__(self, sock, *args, **kwargs):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        super().__init__(sock, *args, **kwargs)
        sock.settimeout(self._limit("idle_timeout"))

    def handle(self):
        self.server.in_flight.opened(self)
        try:
            return super().handle()
        finally:
            self.server.in_flight.closed(self)

    def handle_one_response(self):
        self.server.in_flight.enter()
        try:
            return super().handle_one_response()
        finally:
            self.server.in_flight.leave()

    # A stopping server reads no further requests on kept-alive connections, hangs up those
    # waiting for one, and tells clients not to reuse the connections it still answers on.

    def read_requestline(self):
        if self.server.closed:
            return ""
        with self.server.in_flight.idle_while(self):
            try:
                return super().read_requestline()
            except socket.timeout:  # idle_timeout passed without a request
                return ""

    def read_request(self, raw_requestline):
        import gevent

        limit = self._limit("header_timeout")
        expired = _ClientTimeout(f"request headers did not arrive within {limit:g} s (server.header_timeout)")
        with self.server.in_flight.idle_while(self), gevent.Timeout(limit, expired):
            return super().read_request(raw_requestline)

    def get_environ(self):
        environ = super().get_environ()
        environ["bitrouter.idle_while"] = lambda: self.server.in_flight.idle_while(self)
        return environ

    def handle_one_request(self):
        result = super().handle_one_request()
        if isinstance(result, tuple) and result[1] in _GEVENT_REPLIES:  # gevent's own empty-bodied replies
            return result[0], _raw_error(int(result[0]), _GEVENT_REPLIES[result[1]])
        return result

    def _handle_client_error(self, ex):
        super()._handle_client_error(ex)  # logs it
        if isinstance(ex, _ClientTimeout):
            return "408", _raw_error(408, str(ex))
        return "400", _raw_error(400, "malformed HTTP request")

    def _send_error_response_if_possible(self, error_code):
        """gevent's own 400 (bad chunking) and 500, in JSON like every other error."""
        if self.response_length:
            self.close_connection = True
            return
        message = "malformed HTTP request" if error_code == 400 else "internal error"
        body = json.dumps(_protocol_of(self.environ.get("PATH_INFO", "")).error_body(error_code, message))
        try:
            self.start_response(f"{error_code} {'Bad Request' if error_code == 400 else 'Internal Server Error'}",
                                [("Content-Type", JSON), ("Content-Length", str(len(body))),
                                 ("Connection", "close")])
            self.write(body.encode())
        except OSError:
            self.close_connection = True

    def start_response(self, status, headers, exc_info=None):
        unread = not self.environ.get("bitrouter.read") and (
            self.environ.get("CONTENT_LENGTH", "0") not in ("", "0") or "chunked" in self.environ.get(
                "HTTP_TRANSFER_ENCODING", "").lower())
        if unread:  # do not read (maybe gigabytes of) a body nobody wants: close instead
            self.wsgi_input._chunked_input_error = True  # gevent's own "do not discard" state
        if (self.server.closed or unread) and not any(name.lower() == "connection" for name, _ in headers):
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def hang_up(self) -> None:
        """End an idle keep-alive connection (its pending read sees end-of-file)."""
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):  # already closed, or gone with its handler
            pass

    def _limit(self, name: str) -> float | None:
        return self.server.srv.runtime.cfg.server[name] or None  # 0 turns a timeout off


class _ClientTimeout(ValueError):
    """A client too slow to send its request (gevent answers ValueErrors from reading one with a 400)."""


# gevent's empty-bodied error replies, by the bytes it would send, and what they mean.
_GEVENT_REPLIES = {
    pywsgi._BAD_REQUEST_RESPONSE: "malformed HTTP request",
    pywsgi._REQUEST_TOO_LONG_RESPONSE: f"request line longer than {pywsgi.MAX_REQUEST_LINE} bytes",
}


def _raw_error(status: int, message: str) -> bytes:
    """A whole HTTP error response in OpenAI's error shape, for errors before any request exists."""
    body = json.dumps(protocols.get("openai").error_body(status, message)).encode()
    reason = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {JSON}\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class _InFlight:
    """Counts connections and requests being answered, so stopping can wait for exactly those.

    Connections not yet sending a request are idle; when open connections reach
    `capacity` (the fd soft limit less a reserve), the longest idle one is hung up, so a
    flood of idle or slow connections cannot lock new clients out.
    """

    def __init__(self, capacity: int = 0):
        import gevent.event
        self.count = 0
        self.connections = 0
        self.capacity = capacity  # 0: no cap
        self.idle = gevent.event.Event()
        self.idle.set()
        self.waiting = {}  # handlers of idle connections, oldest first (a dict keeps order)

    def enter(self) -> None:
        self.count += 1
        self.idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if not self.count:
            self.idle.set()

    def opened(self, handler) -> None:
        """A new connection; at capacity, the longest idle connection makes room for it."""
        self.connections += 1
        if self.capacity and self.connections > self.capacity and self.waiting:
            oldest = next(iter(self.waiting))
            log.warning("%d connections open (capacity %d): closing the longest idle one",
                        self.connections, self.capacity)
            self.waiting.pop(oldest)
            oldest.hang_up()

    def closed(self, handler) -> None:
        self.connections -= 1

    @contextlib.contextmanager
    def idle_while(self, handler):
        """Count handler as idle (and first to go at capacity) for the block."""
        self.waiting[handler] = None
        try:
            yield
        finally:
            self.waiting.pop(handler, None)


def main() -> None:
    """`python -m bitrouter.server [global options]`: serve this home in the foreground.

    It becomes `python -m bitrouter serve` (same process id): flags, errors and hints are the
    CLI's, and the server module never imports the CLI that sits above it.
    """
    import sys
    os.execv(sys.executable, [sys.executable, "-m", "bitrouter", "serve", *sys.argv[1:]])


if __name__ == "__main__":
    main()
