"""The request path: one client request in, one reply (or stream) out, with failover.

Nothing here needs a WSGI server: the HTTP layer (app.py) hands over an `Incoming`
(the protocol the client speaks, its body, headers, query and path arguments) and sends
back the `Reply`; a test or a notebook can do the same with a Server in hand:

    reply = proxy.generate(srv, proxy.Incoming(protocols.get("openai"), body=b'{...}'))

The steps of `generate`, each in one place:
  parse        parse_json, protocol.model_of / wants_stream, boundary checks
  record       srv.metrics.begin (closed by _finish, whatever happens)
  authenticate authenticate -> access.Gate
  guard        _guard_request, _guard_loop (guardrails.py)
  route        Router.resolve -> authorize_route (allowlist, budget hold) -> _Call.capable
  call         Router.dispatch(route, _Call.attempt): a pass-through or a translated attempt
  reply        _Answer.finish (non-streamed) or _stream_reply (relayed or re-encoded frames)
  finish       _finish: latency, usage, cost -> Metrics.finish and its listeners
"""

import dataclasses
import hashlib
import json
import logging
import re
import time

from gevent import GreenletExit

from bitrouter import StatusError, access, boundary, guardrails, protocols
from bitrouter.boundary import redact
from bitrouter.metrics import Record, cost_micro_usd
from bitrouter.protocols import Protocol, ProtocolError, Usage
from bitrouter.upstream import UpstreamError

log = logging.getLogger("bitrouter")

JSON = "application/json"
COUNT_CACHE_SIZE = 512  # provider token counts kept, by endpoint and request body
KEEPALIVE_QUEUE = 16  # encoded chunks held per stream while its client is not reading
_STRICT_JSON = json.JSONEncoder(allow_nan=False)  # built once: json.dumps builds one per call with options


class HttpError(StatusError):
    """An error BitRouter itself answers with, in the inbound protocol's shape."""

    def __init__(self, status: int, message: str, headers=None):
        super().__init__(message, status, headers)


@dataclasses.dataclass
class Incoming:
    """One client request as the HTTP layer hands it over.

    headers has get(name) by lower-case name (app.Headers, or a dict with lower-case names);
    args are the route's path arguments (Gemini's model); stream is the route's say
    (Gemini streams by method), None when the body says.
    """

    protocol: Protocol
    body: bytes = b""
    headers: dict = dataclasses.field(default_factory=dict)
    query: dict = dataclasses.field(default_factory=dict)
    args: dict = dataclasses.field(default_factory=dict)
    stream: bool | None = None


@dataclasses.dataclass
class Reply:
    """What goes back to the client: a whole body, or an iterator of chunks for a stream."""

    status: int
    body: object
    headers: dict = dataclasses.field(default_factory=dict)
    content_type: str = JSON


def generate(srv, incoming: Incoming) -> Reply:
    """Serve one inference request end to end, with failover; errors in the inbound shape."""
    clock = time.perf_counter()
    rt = srv.runtime  # requests finish on the runtime they started with, even across a reload
    inbound = incoming.protocol
    record = None
    try:
        body = parse_json(incoming.body)
        model = boundary.check_name(inbound.model_of(body, incoming.args.get("model")))
        stream = inbound.wants_stream(body) if incoming.stream is None else incoming.stream
        record = srv.metrics.begin(inbound.name, model, stream)
        identity = authenticate(srv, incoming, "api", record)
        _guard_request(srv, rt, incoming, body, record)
        route = rt.router.resolve(model)
        record.route = route.name
        route = authorize_route(srv, identity, route, record)
        call = _Call(srv, rt, incoming, body, stream)
        route = call.capable(route)
        _guard_loop(srv, rt, call, record)
        answer, attempts = rt.router.dispatch(route, call.attempt)
    except Exception as exc:  # every failure becomes a protocol-shaped error, never a traceback
        status, message, headers = classify(exc)
        if record:
            record.status, record.error = status, message
            record.attempts = exc.attempts if isinstance(exc, StatusError) else 0
            _finish(srv, rt, None, record, None, clock)
        raw = exc.body if isinstance(exc, UpstreamError) and exc.protocol is inbound else b""
        return error_reply(inbound, status, message, headers, raw, rt.secrets)
    record.upstream, record.attempts = answer.endpoint.label, attempts
    srv.metrics.routed(record)
    headers = {"x-bitrouter-upstream": answer.endpoint.label, "x-bitrouter-attempts": str(attempts)}
    if answer.request is not None and answer.request.dropped:  # hosted tools the target cannot run
        dropped = ", ".join(sorted(set(answer.request.dropped)))
        headers["x-bitrouter-dropped-tools"] = dropped
        log.info("%s: tools left out for %s, which cannot run them: %s", model, answer.endpoint.label, dropped)
    if stream:
        headers["x-bitrouter-overhead-ms"] = f"{(time.perf_counter() - clock) * 1000 - call.upstream_ms:.2f}"
        headers["cache-control"] = "no-cache"
        chunks = _stream_reply(srv, rt, answer, record, clock)
        # Pass-through streams carry the upstream's own keep-alives, so pings are only added
        # to streams BitRouter encodes itself.
        interval = rt.cfg.server["ping_interval"]
        if inbound.keepalive and interval > 0 and answer.kind != "passthrough":
            chunks = _keepalive(chunks, inbound.keepalive, interval)
        return Reply(200, chunks, headers, inbound.framing.CONTENT_TYPE)
    try:
        payload, usage = answer.finish(model)
        _checked(usage)
    except Exception as exc:  # an upstream reply of the wrong shape is the upstream's failure
        record.status, record.error = 502, f"upstream reply could not be read: {type(exc).__name__}: {exc}"
        _finish(srv, rt, answer.endpoint, record, None, clock)
        return error_reply(inbound, 502, record.error, secrets=rt.secrets)
    payload = _guard_reply(srv, rt, inbound, redact(payload, rt.secrets), record, usage)
    record.status = 200
    _finish(srv, rt, answer.endpoint, record, usage, clock)
    headers["x-bitrouter-overhead-ms"] = f"{record.latency_ms - call.upstream_ms:.2f}"
    return Reply(200, payload, headers)


def count(srv, incoming: Incoming) -> Reply:
    """Serve a token count: the target provider's own counter when it has one, else the estimate.

    Agents compact their context by these numbers, so the provider's tokenizer wins; its
    answers are cached per request body, and any failure falls back to the estimate.
    """
    rt, inbound = srv.runtime, incoming.protocol
    identity = authenticate(srv, incoming, "api")
    body = parse_json(incoming.body)
    model = boundary.check_name(inbound.model_of(body, incoming.args.get("model")))
    route = authorize_route(srv, identity, rt.router.resolve(model))
    request = decoded(inbound.count_request, body)
    tokens = _provider_count(srv, rt, route, incoming, request)
    return Reply(200, json.dumps(inbound.count_reply(protocols.estimate_tokens(request) if tokens is None else tokens)))


def models(srv, incoming: Incoming) -> Reply:
    """The model list in the protocol's shape (an api token is needed: the catalogue is not public)."""
    authenticate(srv, incoming, "api")
    return Reply(200, json.dumps(incoming.protocol.model_list(served_models(srv.runtime))))


def model(srv, incoming: Incoming) -> Reply:
    """One model's entry in the protocol's shape; 404 for a model not served here."""
    authenticate(srv, incoming, "api")
    name = incoming.args["model"].removeprefix("models/")
    if name not in {served for served, _owner in served_models(srv.runtime)}:
        raise HttpError(404, f"model {name!r} is not served here")
    return Reply(200, json.dumps(incoming.protocol.model_entry(name)))


def unserved(srv, incoming: Incoming) -> Reply:
    """A 404 for a method the protocol has and BitRouter does not serve, naming those it does."""
    served = [re.sub(r"<(\w+)[^>]*>", r"{\1}", re.sub(r"<:re:([^>]*)>", r"\1", route.path))
              for route in incoming.protocol.routes if route.method == "POST" and route.kind != "unserved"]
    raise HttpError(404, f"no such method here; BitRouter serves {', '.join(served)}")


HANDLERS = {"generate": generate, "count": count, "models": models, "model": model,  # by Route.kind
            "unserved": unserved}


def served_models(rt) -> list[tuple[str, str]]:
    """(model name, owner) pairs: aliases, dynamic routes, then provider:model for configured providers."""
    names = [(r["model"], "bitrouter") for r in rt.router.listing()]
    for provider_name in sorted(rt.providers):
        provider = rt.providers[provider_name]
        if provider.configured:
            names += [(f"{provider_name}:{m}", provider_name) for m in sorted(provider.models)]
    return names


def authenticate(srv, incoming: Incoming, scope: str, record: Record | None = None):
    """The caller's token claims (None when the server runs open); HttpError 401/403/503 on refusal.

    Always checked against the current runtime's configuration: a reload applies at once.
    """
    try:
        token = access.credential(incoming.headers, incoming.query)
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


def authorize_route(srv, identity, route, record: Record | None = None):
    """The route narrowed to the models the token allows; HttpError 403, or 402 over budget.

    With the request's record, a budgeted request holds its round until the record finishes.
    """
    try:
        return srv.gate.authorize(identity, route, record)
    except access.AuthError as exc:
        raise HttpError(exc.status, exc.message) from None


def parse_json(data: bytes) -> dict:
    """A request body as a JSON object; anything else is the client's 400."""
    try:
        body = boundary.load_json(data)
    except boundary.Invalid as exc:
        raise HttpError(400, str(exc)) from None
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body


def decoded(decode, body: dict):
    """Run a protocol decoder (or encoder); a field of the wrong type deep inside the body is the client's 400."""
    try:
        return decode(body)
    except (AttributeError, TypeError, KeyError, IndexError) as exc:
        raise ProtocolError(f"request body has a field of the wrong type or shape ({exc})") from None


def upstream_headers(provider, upstream: Protocol, incoming: Incoming, key: str) -> dict:
    """Auth by the provider's style, the protocol's fixed headers, and (same protocol only)
    the client headers the protocol forwards, such as Claude Code's anthropic-beta."""
    headers = {"content-type": JSON, **upstream.fixed_headers}
    if upstream is incoming.protocol:
        for name in upstream.forward_headers:
            value = incoming.headers.get(name)
            if value:
                headers[name] = value
    headers.update(protocols.AUTH_STYLES[provider.auth](key))
    headers.update(provider.default_headers)
    return headers


def classify(exc) -> tuple[int, str, dict]:
    """Status, message and extra headers for any exception on the request path (see StatusError)."""
    if isinstance(exc, StatusError):
        return exc.reply()
    log.exception("internal error")
    return 500, f"internal error: {type(exc).__name__}", {}


def error_reply(protocol: Protocol, status: int, message: str, headers=None, raw: bytes = b"", secrets=()) -> Reply:
    """An error in the protocol's shape (never HTML, never a traceback, no key); raw is an
    upstream's own error body, relayed to a client of the same protocol."""
    body = raw or json.dumps(protocol.error_body(status, str(message)))
    return Reply(status, redact(body, secrets), dict(headers or {}))


# ---------------------------------------------------------------- the upstream call


class _Answer:
    """A successful upstream attempt whose body (or stream) is ready to be read."""

    def __init__(self, endpoint, upstream: Protocol, inbound: Protocol, kind: str, payload, request):
        self.endpoint = endpoint
        self.upstream = upstream
        self.inbound = inbound
        self.kind = kind  # passthrough | translated
        self.payload = payload  # (raw, parsed), or an iterator of chunks when streamed
        self.request = request  # the unified request (None for pass-through)

    def finish(self, model: str):
        """The client's non-streamed body and the usage, from the upstream reply."""
        raw, data = self.payload
        if self.kind == "passthrough":
            field_name = self.inbound.model_field
            if data.get(field_name, model) != model:  # name the model the client asked for
                raw = protocols.body_model(raw, data, field_name, model)
            return raw, self.inbound.usage_of(data)
        resp = self.upstream.decode_response(data)
        for part in resp.parts:
            part.signature = protocols.seal(part.signature, self.endpoint.label)
        return json.dumps(self.inbound.encode_response(resp, model, self.request)), resp.usage

    def events(self, max_frame: int = 0):
        """Unified stream events of a translated answer, proofs sealed with their producer;
        frames are bounded by max_frame."""
        parser, decoder = self.upstream.framing.Parser(max_frame), self.upstream.StreamDecoder()
        for chunk in self.payload:
            for event, data in parser.feed(chunk):
                yield from self._sealed(decoder.feed(event, data))
        for event, data in parser.close():
            yield from self._sealed(decoder.feed(event, data))

    def _sealed(self, events):
        for event in events:
            if event.signature:
                event.signature = protocols.seal(event.signature, self.endpoint.label)
            yield event


class _Call:
    """One client request's attempts against successive endpoints.

    An attempt is a pass-through when the provider speaks the client's protocol (the body
    goes as it came, but for `model`) and a translation otherwise (decoded once into the
    unified model, encoded for each provider's protocol).
    """

    def __init__(self, srv, rt, incoming: Incoming, body: dict, stream: bool):
        self.srv, self.rt, self.incoming, self.body, self.stream = srv, rt, incoming, body, stream
        self.inbound = incoming.protocol
        self.raw = incoming.body  # the body as it came, for cheap looks before anything is decoded
        self.sealed = protocols.SEAL_PREFIX.encode() in self.raw  # proofs sealed on a translated turn
        self.unified = None
        self.upstream_ms = 0.0

    def attempt(self, endpoint) -> _Answer:
        """Try one endpoint; raises UpstreamError (retryable or not) on failure."""
        provider = self.rt.providers[endpoint.provider]
        upstream = protocols.get(provider.api_protocol)
        if upstream is self.inbound:
            kind, request, payload = "passthrough", None, self._passthrough(endpoint)
        else:  # each endpoint sees only the reasoning proofs it produced itself
            kind, request = "translated", protocols.own_proofs(self.unified_request(), endpoint.label)
            payload = decoded(lambda req: upstream.encode_request(req, endpoint.model_id), request)
        base = endpoint.api_base or provider.api_base
        url = upstream.request_url(base, endpoint.model_id, self.stream)
        key = endpoint.api_key or provider.api_key
        headers = upstream_headers(provider, upstream, self.incoming, key)
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
                body = _primed(reply, upstream.framing, limits["max_frame_bytes"])
            else:
                body = _parsed(reply.read(limits["max_body_bytes"]))
        finally:
            self.upstream_ms += (time.perf_counter() - started) * 1000
        return _Answer(endpoint, upstream, self.inbound, kind, body, request)

    def capable(self, route):
        """The route without endpoints whose catalog says they cannot take this request's images or files.

        Decoding costs time, so it only happens when such an endpoint is on the route;
        with none left the request is a clear 400 instead of an upstream's confusing one.
        """
        text_only = [e for e in route.endpoints
                     if "image" not in self.rt.providers[e.provider].models.get(e.model_id, {}).get("modalities", ["image"])]
        if not text_only or not any(p.kind in protocols.MEDIA
                                    for m in self.unified_request().messages for p in _all_parts(m)):
            return route
        usable = [e for e in route.endpoints if e not in text_only]
        if not usable:
            raise HttpError(400, f"model {route.name!r} does not accept images or files "
                                 f"({', '.join(e.label for e in text_only)} take text only)")
        return dataclasses.replace(route, endpoints=usable)

    def unified_request(self):
        """The request in the unified model, decoded on first use (pass-through never needs it)."""
        if self.unified is None:
            self.unified = boundary.check_fields(decoded(self.inbound.decode_request, self.body))
            self.unified.stream = self.stream  # Gemini streams by method, not by a body field
        return self.unified

    def _passthrough(self, endpoint) -> dict:
        # A sealed proof in a pass-through body was made by a provider of another protocol
        # (the conversation was translated before): it can only be dropped.
        body = self.inbound.drop_sealed(self.body) if self.sealed else self.body
        return self.inbound.passthrough_body(body, endpoint.model_id, self.stream)


def _provider_count(srv, rt, route, incoming: Incoming, request) -> int | None:
    """The first usable endpoint's own token count (cached per body), or None when it has no counter."""
    endpoint = rt.router.candidates(route)[0]
    provider = rt.providers[endpoint.provider]
    upstream = protocols.get(provider.api_protocol)
    if upstream.count_url is None:  # Chat Completions has no counter: nothing to ask
        return None
    payload = json.dumps(upstream.count_body(protocols.own_proofs(request, endpoint.label), endpoint.model_id)).encode()
    key = (endpoint.label, hashlib.sha256(payload).digest())
    if key in srv.counts:
        srv.counts.move_to_end(key)
        return srv.counts[key]
    headers = upstream_headers(provider, upstream, incoming, endpoint.api_key or provider.api_key)
    try:
        reply = srv.pools.send(upstream.count_url(endpoint.api_base or provider.api_base, endpoint.model_id),
                               headers, payload)
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


def _all_parts(message):
    """A message's parts, including those inside tool results."""
    for part in message.parts:
        yield part
        yield from part.content


def _wire_json(payload) -> bytes:
    """A body for the upstream: strict JSON (a NaN that got this far is refused, not sent)."""
    try:
        return _STRICT_JSON.encode(payload).encode()
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


def _primed(reply, framing, max_frame: int):
    """Read up to the first whole frame now, so a stream that is not one can still fail over.

    An HTML page (a captive portal, a wrong base URL) or a stream that dies before its
    first frame is an endpoint failure, before anything is sent to the client.
    """
    kind = reply.headers.get("content-type", "")
    if framing.CONTENT_TYPE not in kind:
        reply.close()
        raise UpstreamError(f"upstream answered a stream with content-type {kind[:60]!r}, "
                            f"not {framing.CONTENT_TYPE}", status=502)
    chunks, parser, head = reply.chunks(), framing.Parser(max_frame), []
    try:
        while not parser.frames(head[-1] if head else b""):
            chunk = next(chunks, b"")
            if not chunk:
                raise UpstreamError("upstream closed the stream before its first event", kind="connect")
            head.append(chunk)
    except framing.FrameTooLarge as exc:
        reply.close()
        raise UpstreamError(str(exc), status=502) from None

    def rest():
        try:
            yield from head
            yield from chunks
        finally:
            chunks.close()
    return rest()


def _stream_reply(srv, rt, answer: _Answer, record: Record, clock: float):
    """The streamed body: relayed frames, or re-encoded events; failures end it in-band."""
    inbound, secrets = answer.inbound, rt.secrets
    usage, complete, encoder = None, False, None
    # Downgoing frames pass through the guardrails' guard, which holds back only what may
    # still be completing a match; a block ends the stream with the protocol's in-band error.
    guard = rt.cfg.guardrails.stream_guard(inbound.text_fields.get("stream"), inbound.stream_error,
                                           lambda hits: _report(srv, record, hits))
    guarded = guard.feed if guard else (lambda out: out)
    try:
        if answer.kind == "passthrough":
            # Only whole frames are relayed, each naming the client's model: a cut leaves no
            # half frame for the error to join.
            parser = inbound.framing.Parser(rt.cfg.upstream["max_frame_bytes"])
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
        yield (encoder.error if encoder else inbound.stream_error)(502, record.error)
    finally:
        answer.payload.close()
        _finish(srv, rt, answer.endpoint, record, usage, clock)


def _keepalive(body, frame: bytes, interval: float):
    """Relay a streamed body, adding `frame` whenever nothing was sent for `interval` seconds.

    The body runs in its own greenlet feeding a queue, so a silent upstream read cannot
    hold the keep-alive back; only protocols with a keep-alive frame pay for the hand-off.
    The queue is short: while the client does not read, the upstream is not read either.
    """
    import gevent
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


def _finish(srv, rt, endpoint, record: Record, usage, clock: float) -> None:
    """Close the request's record: latency, usage and cost from the answering endpoint's prices.

    endpoint and usage are None when the request failed before any endpoint answered.
    """
    record.latency_ms = (time.perf_counter() - clock) * 1000
    if usage is not None:
        record.usage = usage
        info = rt.providers[endpoint.provider].models.get(endpoint.model_id) or {}
        record.cost_micro_usd = cost_micro_usd(usage, info.get("pricing") or {})
    srv.metrics.finish(record)


# ---------------------------------------------------------------- guardrails on the request path
# (bitrouter/guardrails.py, docs/guardrails.md); every hit is counted, logged and announced.


def _guard_request(srv, rt, incoming: Incoming, body: dict, record: Record) -> None:
    """Redact or refuse the request's text (upgoing), and refuse a session over its limits."""
    policy = rt.cfg.guardrails
    hits = []
    try:
        policy.walk(body, incoming.protocol.text_fields["request"], guardrails.UPGOING, hits)
    except guardrails.GuardrailError as exc:
        raise HttpError(400, str(exc)) from None
    finally:
        _report(srv, record, hits)
    if policy.loop["enabled"]:
        record.session = guardrails.session_of(body, incoming.headers)
        refusal = srv.sessions.admit(record.session, policy.loop)
        if refusal:
            _report(srv, record, [guardrails.Hit("session_limit", guardrails.UPGOING, "block", "session")])
            raise HttpError(400, refusal)


def _guard_loop(srv, rt, call: _Call, record: Record) -> None:
    """Warn about, or stop, an agent repeating the same tool call (or getting the same tool error)."""
    loop = rt.cfg.guardrails.loop
    thresholds = [n for n in (loop["warn_after"], loop["stop_after"]) if n]
    if not loop["enabled"] or not thresholds:
        return
    # A loop needs that many tool calls in the history: with fewer, the body is not even decoded.
    if sum(call.raw.count(mark) for mark in call.inbound.tool_call_marks) < min(thresholds):
        return
    try:
        messages = call.unified_request().messages
    except ProtocolError:  # a pass-through body our decoder cannot read: the upstream may still take it
        return
    verdict = guardrails.loop_verdict(messages, loop)
    if verdict:
        action, message = verdict
        _report(srv, record, [guardrails.Hit("tool_loop", guardrails.UPGOING, action, "messages")])
        if action == "block":
            raise HttpError(400, message)
        log.warning("request %d: %s", record.id, message)


def _guard_reply(srv, rt, inbound: Protocol, payload, record: Record, usage):
    """A non-streamed reply with its text checked (downgoing); a block becomes an in-band refusal."""
    policy = rt.cfg.guardrails
    if not policy.rules[guardrails.DOWNGOING] or not policy.may_match(payload, guardrails.DOWNGOING):
        return payload  # no rule can match: not even decoded
    data, hits = json.loads(payload), []
    try:
        changed = policy.walk(data, inbound.text_fields["reply"], guardrails.DOWNGOING, hits)
    except guardrails.GuardrailError as exc:
        record.error = str(exc)
        refusal = protocols.Response(id="bitrouter-guardrail", model=record.model,
                                     parts=[protocols.Part("text", text=str(exc))],
                                     finish_reason="content_filter", usage=usage)
        data, changed = inbound.encode_response(refusal, record.model), True
    finally:
        _report(srv, record, hits)
    return json.dumps(data) if changed else payload


def _report(srv, record: Record, hits: list) -> None:
    """Count, log and announce guardrail hits; the matched text is never part of them."""
    if not hits:
        return
    srv.metrics.guardrail(record, hits)
    for hit in hits:
        log.warning("guardrail %s: %s (%s, %s, %d match%s) on request %d", hit.action, hit.pattern,
                    hit.direction, hit.where, hit.count, "" if hit.count == 1 else "es", record.id)
