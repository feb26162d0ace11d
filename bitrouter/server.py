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
import itertools
import json
import logging
import os
import socket
import time

import bottle
from gevent import GreenletExit
from gevent.pywsgi import WSGIHandler

from bitrouter import Error, access, config, daemon, protocols
from bitrouter import home as home_mod
from bitrouter.metrics import Metrics, Record, cost_micro_usd, dashboard, redact, secrets_of
from bitrouter.protocols import ProtocolError, Usage, sse
from bitrouter.router import AllFailed, Health, RouteError, Router, describe, dynamic_route
from bitrouter.upstream import Pools, UpstreamError

log = logging.getLogger("bitrouter")

JSON = "application/json"
EVENT_BATCH_SECONDS = 0.05  # /admin/events: how long a wake-up waits for more events to send along
# Base URL slips served as meant: `http://host:8787` without the /v1 an SDK expects to be
# in its base URL, and a base URL ending in /v1 that the client adds another /v1 to.
BASE_URL_SLIPS = ("/chat/completions", "/responses", "/messages", "/models")
COUNT_CACHE_SIZE = 512  # provider token counts kept, by endpoint and request body


class HttpError(Exception):
    """An error BitRouter itself answers with, in the inbound protocol's shape."""

    def __init__(self, status: int, message: str, headers=None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class Runtime:
    """Everything built from one configuration; swapped whole on reload."""

    def __init__(self, cfg, dynamic: dict, health: Health):
        self.cfg = cfg
        self.router = Router(cfg, dynamic, health)
        self.providers = cfg.providers


class Server:
    """One BitRouter server: the current runtime plus state that outlives reloads."""

    def __init__(self, home, cfg=None):
        self.home = home
        self.dynamic = {}
        self.health = Health()
        self.metrics = Metrics()
        self.started = time.time()
        self.counts = collections.OrderedDict()  # (endpoint label, body digest) -> provider token count
        self.mode = "foreground"  # how this process runs the server: foreground | dashboard | daemon
        self.port = None  # the port actually bound, once listening
        cfg = cfg or config.load(home)
        self.bound = _bound_settings(cfg)  # fixed for this process: a reload only reports changes
        self.pools = Pools(cfg.upstream["connect_timeout"], cfg.upstream["read_timeout"])
        self.runtime = Runtime(cfg, self.dynamic, self.health)
        self.gate = access.Gate(home, cfg, self.metrics)  # AUTH HOOK: refuses an open public listener
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
                             f"until `{home_mod.command('restart')}`")
        for name, route in list(self.dynamic.items()):
            gone = sorted({e.provider for e in route.endpoints if e.provider not in cfg.providers})
            if gone:  # its endpoints could no longer be called
                del self.dynamic[name]
                notes.append(f"dynamic route {name!r} was removed: provider {', '.join(gone)} no longer exists")
        self.pools.set_timeouts(cfg.upstream["connect_timeout"], cfg.upstream["read_timeout"])
        self.runtime = runtime
        log.info("configuration reloaded (%s) in %.1f ms%s", source, (time.perf_counter() - clock) * 1000,
                 "".join("; " + note for note in notes))
        return notes


def _bound_settings(cfg) -> dict:
    """Settings a running server cannot change: the socket it listens on, the database it opened."""
    return {"server.listen": cfg.listen, "database.url": config.mask_url(cfg.database_url)}


def serve(home, cfg=None) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM, then drain in-flight requests."""
    import signal

    import gevent
    import gevent.event

    running = start(home, cfg)  # its log line says where it listens
    stop = gevent.event.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, stop.set)
    stop.wait()
    running.stop()


def start(home, cfg=None, mode="foreground") -> "Running":
    """Start listening in this process (gevent patched) and return the handle that stops it.

    The process first claims the home's pid file (one server per run dir), logs to
    <logs>/bitrouter.log, reloads on SIGHUP, and publishes its URL once listening.
    """
    import signal

    import gevent
    from gevent.pywsgi import WSGIServer

    srv = Server(home, cfg)
    if mode == "foreground" and daemon.detached(home):
        mode = "daemon"
    srv.mode = mode
    host, port = srv.runtime.cfg.host_port
    with contextlib.ExitStack() as owned:  # released here on failure, else by Running.stop()
        claim = owned.enter_context(daemon.pid_file(home))
        owned.enter_context(daemon.server_log(home, srv, echo=mode == "foreground"))
        try:
            listener = WSGIServer((host, port), srv.app, log=None, error_log=log, handler_class=_Handler)
            listener.init_socket()
        except OSError as exc:
            raise Error(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        listener.in_flight = _InFlight()
        if mode != "dashboard":  # the dashboard's SIGHUP is its terminal going away: it ends
            hup = gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(_reload_on_signal, srv))
            owned.callback(hup.cancel)
        listener.start()
        srv.port = listener.server_port
        url = daemon.connect_url(host, srv.port)
        claim.publish(url, mode)
        log.info("server started (pid %d, %s) on %s", os.getpid(), mode, url)
        srv.gate.start(owned)  # AUTH HOOK: logs the auth mode; closes (writes all spend) after the drain
        return Running(srv, listener, owned.pop_all())


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
        return _admin(srv, lambda: _json(dashboard(srv, _count_param("recent", 100))))

    @app.get("/admin/events")
    def admin_events():
        return _admin(srv, lambda: _event_stream(srv))

    @app.get("/metrics")
    def prometheus_metrics():
        return _guard(openai, lambda: _prometheus(srv))

    def default_error(err):  # unknown paths and wrong methods, in the shape the path's clients parse
        path = bottle.request.path
        inbound = anthropic if path.startswith("/v1/messages") else \
            google if path.startswith("/v1beta/") or (path.startswith("/v1/models/") and ":" in path) else openai
        message = err.body or err.status_line
        if err.status_code == 404:
            message += (f" ({bottle.request.method} {path} is not served; point OpenAI and Anthropic "
                        f"clients at {_base_url(srv)}/v1, Gemini clients at {_base_url(srv)})")
        return _error(inbound, err.status_code, message)
    app.default_error_handler = default_error
    return app


def relay(srv: Server, inbound, path_model: str | None = None, action: str | None = None):
    """Serve one inference request end to end, with failover; errors in the inbound shape."""
    clock = time.perf_counter()
    rt = srv.runtime  # requests finish on the runtime they started with, even across a reload
    record = None
    try:
        raw = read_body(rt.cfg)
        body = parse_json(raw)
        model = inbound.model_of(body, path_model)
        stream = inbound.wants_stream(body, action)
        record = srv.metrics.begin(inbound.NAME, model, stream)
        identity = authenticate(srv, "api", record)
        route = rt.router.resolve(model)
        record.route = route.name
        route = authorize_route(srv, identity, route)
        call = _Call(srv, rt, inbound, body, stream, sealed=protocols.SEAL_PREFIX.encode() in raw)
        route = call.capable(route)
        answer, attempts = rt.router.dispatch(route, call.attempt)
    except Exception as exc:  # every failure becomes a protocol-shaped error, never a traceback
        status, message, headers = _classify(exc)
        if record:
            record.status, record.error = status, message
            record.attempts = getattr(exc, "attempts", 0)
            _finish(srv, rt, None, record, None, clock)
        raw = getattr(exc, "body", b"") if _same_protocol_error(exc, inbound) else b""
        return _error(inbound, status, message, headers, raw)
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
        # Pass-through streams carry the upstream's own keep-alives, and their chunks may end
        # mid-event, so pings are only added to streams BitRouter encodes itself.
        ping, interval = getattr(inbound, "KEEPALIVE", b""), rt.cfg.server["ping_interval"]
        if ping and interval > 0 and answer.kind != "passthrough":
            return _keepalive(body, ping, interval)
        return body
    try:
        payload, usage = answer.finish(model)
    except (ProtocolError, ValueError, KeyError, TypeError) as exc:
        record.status, record.error = 502, f"upstream reply could not be translated: {exc}"
        _finish(srv, rt, answer.endpoint, record, None, clock)
        return _error(inbound, 502, record.error)
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
        route = authorize_route(srv, identity, rt.router.resolve(inbound.model_of(body, path_model)))
        request = decoded(inbound.count_request, body)
        tokens = _provider_count(srv, rt, route, inbound, body, request)
        return _json(inbound.count_reply(protocols.estimate_tokens(request) if tokens is None else tokens))
    return _guard(inbound, count)


def _provider_count(srv: Server, rt: Runtime, route, inbound, body: dict, request) -> int | None:
    """The first usable endpoint's own token count (cached per body), or None when it has no counter."""
    endpoint = rt.router.candidates(route)[0]
    provider = rt.providers[endpoint.provider]
    upstream = protocols.get(provider.api_protocol)
    count_url = getattr(upstream, "count_url", None)  # Chat Completions and mock count nothing
    if count_url is None:
        return None
    payload = json.dumps(upstream.count_body(protocols.own_proofs(request, endpoint.label), endpoint.model_id)).encode()
    key = (endpoint.label, hashlib.sha256(payload).digest())
    if key in srv.counts:
        srv.counts.move_to_end(key)
        return srv.counts[key]
    headers = _Call(srv, rt, inbound, body, False)._headers(provider, upstream, endpoint.api_key or provider.api_key)
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
    token = access.credential(bottle.request.headers, bottle.request.query)
    try:
        claims = srv.gate.authenticate(srv.runtime.cfg, token, scope)
    except access.AuthError as exc:
        challenge = {"www-authenticate": 'Bearer realm="bitrouter"'} if exc.status == 401 else None
        raise HttpError(exc.status, exc.message, challenge) from None
    if record is not None and claims is not None:
        record.account, record.token_hash = claims.iss, claims.token_hash
    return claims


def authorize_route(srv: Server, identity, route):
    """The route narrowed to the models the token allows; HttpError 403, or 402 over budget."""
    try:
        return srv.gate.authorize(identity, route)
    except access.AuthError as exc:
        raise HttpError(exc.status, exc.message) from None


def listing(srv: Server, handler):
    """A model-listing handler that first requires an api token (the catalogue is not public)."""
    def checked():
        authenticate(srv, "api")
        return handler()
    return checked


def decoded(decode, body: dict):
    """Run a protocol decoder; a field of the wrong type deep inside the body is the client's 400."""
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
    length = bottle.request.content_length
    if length > limit:
        raise HttpError(413, f"request body is {length} bytes; the limit is {limit}")
    data = bottle.request.environ["wsgi.input"].read(length if length >= 0 else limit + 1)
    if len(data) > limit:
        raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
    return data


def parse_json(data: bytes) -> dict:
    """A request body as a JSON object; anything else is the client's 400."""
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise HttpError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body


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

    def events(self):
        """Unified stream events (translated and mock answers), proofs sealed with their producer."""
        for event in self._decoded():
            if event.signature:
                event.signature = protocols.seal(event.signature, self.endpoint.label)
            yield event

    def _decoded(self):
        if self.kind == "mock":
            yield from self.payload
            return
        parser, decoder = sse.Parser(), self.upstream.StreamDecoder()
        for chunk in self.payload:
            for event, data in parser.feed(chunk):
                yield from decoder.feed(event, data)
        for event, data in parser.close():
            yield from decoder.feed(event, data)


class _Call:
    """One client request's attempts against successive endpoints."""

    def __init__(self, srv: Server, rt: Runtime, inbound, body: dict, stream: bool, sealed: bool = False):
        self.srv, self.rt, self.inbound, self.body, self.stream = srv, rt, inbound, body, stream
        self.sealed = sealed  # the body carries proofs BitRouter sealed on a translated turn
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
            payload = upstream.encode_request(request, endpoint.model_id)
        base = endpoint.api_base or provider.api_base
        url = upstream.request_url(base, endpoint.model_id, self.stream)
        key = endpoint.api_key or provider.api_key
        headers = self._headers(provider, upstream, key)
        started = time.perf_counter()
        try:
            reply = self.srv.pools.send(url, headers, json.dumps(payload).encode())
            if reply.status >= 400:
                error = reply.error(upstream.error_message)
                error.protocol = upstream
                if key and len(key) >= 8:  # some upstreams echo the key they refused
                    error.message = error.message.replace(key, config.mask(key))
                    error.body = error.body.replace(key.encode(), config.mask(key).encode())
                raise error
            body = _primed(reply.chunks()) if self.stream else _parsed(reply.read())
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
            self.unified = decoded(self.inbound.decode_request, self.body)
            self.unified.stream = self.stream  # Gemini streams by method, not by a body field
        return self.unified

    def _headers(self, provider, upstream, key: str) -> dict:
        """Auth by the provider's style, the protocol's fixed headers, forwarded client headers."""
        headers = {"content-type": JSON, **upstream.FIXED_HEADERS}
        if upstream is self.inbound:
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


def _parsed(raw: bytes) -> tuple[bytes, dict]:
    """A non-streamed upstream body with its JSON; garbage counts as an endpoint failure."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise UpstreamError("upstream returned a body that is not JSON", status=502) from None
    if not isinstance(data, dict):
        raise UpstreamError("upstream returned JSON that is not an object", status=502)
    return raw, data


def _primed(chunks):
    """Read the first chunk now, so a stream that dies at once can still fail over."""
    first = next(chunks, b"")
    if not first:
        raise UpstreamError("upstream closed the stream before sending anything", kind="connect")

    def rest():
        yield first
        yield from chunks
    return rest()


def _stream_reply(srv: Server, rt: Runtime, answer: _Answer, record: Record, clock: float):
    """The streamed body: relayed frames, or re-encoded events; failures end it in-band."""
    inbound = answer.inbound
    usage, complete, encoder = None, False, None
    try:
        if answer.kind == "passthrough":  # whole frames only, each naming the client's model
            parser = sse.Parser()
            for chunk in itertools.chain(answer.payload, [None]):
                out = []
                for raw, event, data in parser.frames(chunk) if chunk is not None else parser.close_frames():
                    out.append(inbound.relay_frame(event, raw, record.model))
                    if data is not None:
                        usage = _running_usage(usage, inbound.stream_usage(event, data))
                        complete = complete or inbound.is_final(event, data)
                if out:
                    yield b"".join(out)
        else:
            encoder = inbound.StreamEncoder(record.model, answer.request)
            for event in answer.events():
                if event.kind == "usage":
                    usage = event.usage
                complete = complete or event.kind == "finish"
                out = encoder.event(event)
                if out:
                    yield out
            if complete:
                yield encoder.finish_stream()
        if not complete:  # the connection closed cleanly but the protocol's ending never came
            raise UpstreamError("upstream stream ended before it was complete")
        record.status = 200
    except (UpstreamError, ProtocolError, ValueError) as exc:
        record.status, record.error = 502, str(exc)
        log.warning("stream from %s broke: %s", answer.endpoint.label, exc)
        # An encoder with stream state (Responses numbers its events) ends the stream itself.
        yield (getattr(encoder, "error", None) or inbound.stream_error)(502, str(exc))
    except (GeneratorExit, GreenletExit):  # the client went away
        record.status, record.error = 499, "client disconnected"
        raise
    finally:
        _close(answer.payload)
        _finish(srv, rt, answer.endpoint, record, usage, clock)


def _keepalive(body, frame: bytes, interval: float):
    """Relay a streamed body, adding `frame` whenever nothing was sent for `interval` seconds.

    The body runs in its own greenlet feeding a queue, so a silent upstream read cannot
    hold the keep-alive back; only protocols with a keep-alive frame pay for the hand-off.
    """
    import gevent.queue

    queue = gevent.queue.Queue()

    def pump():
        try:
            for chunk in body:
                queue.put(chunk)
            queue.put(None)
        except BaseException as exc:  # re-raised in the request's own greenlet
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
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    srv.dynamic[route.name] = route
    log.info("dynamic route %s set: %s", route.name, ", ".join(e.label for e in route.endpoints))
    return _json({"status": "ok", "route": describe(route)})


def _remove_route(srv: Server, name: str):
    if srv.dynamic.pop(name, None) is None:
        raise HttpError(404, f"no dynamic route named {name!r}")
    return _json({"status": "ok", "model": name, "removed": True})


def _reload(srv: Server):
    try:
        notes = srv.reload("POST /admin/reload")
    except config.ConfigError as exc:  # the request was fine; the configuration on disk is not
        raise HttpError(422, f"configuration not reloaded (the previous one keeps serving): {exc}") from None
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
            secrets = secrets_of(srv.runtime.cfg)  # once per batch, not per event; a reload may change them
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
    if not value.isdigit():
        raise HttpError(400, f"query parameter {name!r} must be a non-negative integer")
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
        return handler()
    except Exception as exc:
        status, message, headers = _classify(exc)
        return _error(inbound, status, message, headers)


def _classify(exc) -> tuple[int, str, dict]:
    """Status, message and extra headers for any exception on the request path."""
    if isinstance(exc, (HttpError, ProtocolError, RouteError)):
        return exc.status, str(exc), getattr(exc, "headers", {})
    if isinstance(exc, AllFailed):
        headers = {"x-should-retry": "false", "x-bitrouter-attempts": str(exc.attempts)}
        if exc.retry_after:
            headers["retry-after"] = str(int(exc.retry_after + 0.999))
        return exc.status, str(exc), headers
    if isinstance(exc, UpstreamError):  # a request error the upstream rejected: not retried
        return exc.status or 502, exc.message, {"x-bitrouter-attempts": str(getattr(exc, "attempts", 1))}
    log.exception("internal error")
    return 500, f"internal error: {type(exc).__name__}", {}


def _same_protocol_error(exc, inbound) -> bool:
    return isinstance(exc, UpstreamError) and getattr(exc, "protocol", None) is inbound


def _error(inbound, status: int, message: str, headers=None, raw: bytes = b""):
    """An error response in the inbound protocol's shape (never HTML, never a traceback)."""
    resp = bottle.HTTPResponse(status=status, body=raw or json.dumps(inbound.error_body(status, str(message))))
    resp.content_type = JSON
    for name, value in (headers or {}).items():
        resp.set_header(name, value)
    return resp


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
    """Sets TCP_NODELAY on accepted connections, so small replies are not held back by Nagle."""

    def __init__(self, sock, *args, **kwargs):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        super().__init__(sock, *args, **kwargs)

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
        self.server.in_flight.waiting.add(self)
        try:
            return super().read_requestline()
        finally:
            self.server.in_flight.waiting.discard(self)

    def start_response(self, status, headers, exc_info=None):
        if self.server.closed and not any(name.lower() == "connection" for name, _ in headers):
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def hang_up(self) -> None:
        """End an idle keep-alive connection (its pending read sees end-of-file)."""
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):  # already closed, or gone with its handler
            pass


class _InFlight:
    """Counts requests being answered, so stopping can wait for exactly those."""

    def __init__(self):
        import gevent.event
        self.count = 0
        self.idle = gevent.event.Event()
        self.idle.set()
        self.waiting = set()  # handlers of idle keep-alive connections, waiting for a request

    def enter(self) -> None:
        self.count += 1
        self.idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if not self.count:
            self.idle.set()


def main() -> None:
    """`python -m bitrouter.server [global options]`: serve this home in the foreground."""
    from bitrouter import cli
    cli.main(["serve"] + __import__("sys").argv[1:])


if __name__ == "__main__":
    main()
