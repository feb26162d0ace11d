"""The HTTP layer: a bottle application whose routes come from the protocols' declarations.

Every route is one `endpoint`: it checks the headers, reads the body within the limits,
hands an `Incoming` to a handler of the request path (proxy.py) or the admin API
(admin.py), and sends back its `Reply`; whatever is raised becomes an error in the shape
the path's clients parse. Unknown paths get the same treatment (default_error).
"""

import contextlib

import bottle

from bitrouter import admin, boundary, daemon, protocols, proxy
from bitrouter.proxy import HttpError, Incoming

# Base URL slips served as meant: `http://host:8787` without the /v1 an SDK expects to be
# in its base URL, and a base URL ending in /v1 that the client adds another /v1 to.
BASE_URL_SLIPS = ("/chat/completions", "/responses", "/messages", "/models")
# The error shape of the admin API, of paths no protocol claims and of requests too broken
# to have a path: OpenAI's, the one most clients read.
FALLBACK = "openai"
_UNPREFIXED = ("CONTENT_TYPE", "CONTENT_LENGTH")  # the headers WSGI names without HTTP_
_ENVIRON_KEYS = {}  # header name -> its WSGI environ key


def build_app(srv) -> bottle.Bottle:
    """The bottle application with every route bound to one Server."""
    app = bottle.Bottle()
    app.config["catchall"] = False  # exceptions reach `endpoint`, which answers in the protocol's shape
    app.uninstall(bottle.JSONPlugin)  # every endpoint returns a whole response: one wrapper less a request
    app.add_hook("before_request", _forgive_base_url)
    for wire in protocols.every():
        for route in wire.routes:
            app.route(route.path, route.method, endpoint(srv, wire, proxy.HANDLERS[route.kind], route.stream))
    for method, path, handler in admin.ROUTES:
        app.route(path, method, endpoint(srv, protocols.get(FALLBACK), handler))

    def default_error(err):  # unknown paths and wrong methods, in the shape the path's clients parse
        path = bottle.request.path
        message = err.body or err.status_line
        if err.status_code == 404:
            host, port = srv.runtime.cfg.host_port
            base = daemon.connect_url(host, srv.port or port)
            message += (f" ({bottle.request.method} {path} is not served; point OpenAI and Anthropic "
                        f"clients at {base}/v1, Gemini clients at {base})")
        return _respond(proxy.error_reply(protocol_of(path), err.status_code, message))
    app.default_error_handler = default_error
    return app


def endpoint(srv, protocol, handler, stream: bool | None = None):
    """A bottle callback serving `handler(srv, Incoming)`, its errors in `protocol`'s shape."""
    def serve(**args):
        try:
            boundary.check_headers(bottle.request.environ)
            body = read_body(srv.runtime.cfg) if bottle.request.method == "POST" else b""
            environ = bottle.request.environ
            query = bottle.request.query if environ.get("QUERY_STRING") else {}
            reply = handler(srv, Incoming(protocol, body, Headers(environ), query, args, stream))
        except Exception as exc:
            status, message, headers = proxy.classify(exc)
            reply = proxy.error_reply(protocol, status, message, headers, secrets=srv.runtime.secrets)
        return _respond(reply)
    return serve


class Headers:
    """A request's headers by name, any case, read straight from the WSGI environ.

    check_headers has refused every value that is not ASCII, so none needs re-decoding
    (bottle's own headers object re-decodes each value it is asked for).
    """

    __slots__ = ("environ",)

    def __init__(self, environ: dict):
        self.environ = environ

    def get(self, name: str, default=None):
        """The header's value, or default."""
        key = _ENVIRON_KEYS.get(name)
        if key is None:
            key = name.upper().replace("-", "_")
            key = key if key in _UNPREFIXED else "HTTP_" + key
            if len(_ENVIRON_KEYS) < 256:  # the names the code asks for: a few, always the same
                _ENVIRON_KEYS[name] = key
        return self.environ.get(key, default)


def protocol_of(path: str):
    """The protocol whose clients use a path (the longest route prefix matching it), else FALLBACK's:
    errors raised before any route answers are shaped for the client that called."""
    best, length = protocols.get(FALLBACK), 0
    for wire in protocols.every():
        for prefix in (*wire.client_prefixes, *(route.path.split("<", 1)[0] for route in wire.routes)):
            if len(prefix) > length and path.startswith(prefix):
                best, length = wire, len(prefix)
    return best


def read_body(cfg) -> bytes:
    """The raw request body, within the configured size limit and body timeout."""
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


def corrected_path(path: str) -> str:
    """The path a client meant when its base URL lacked /v1 or had it twice."""
    while path.startswith("/v1/v1/"):
        path = path[3:]
    if any(path == slip or path.startswith(slip + "/") for slip in BASE_URL_SLIPS):
        path = "/v1" + path
    return path


def _forgive_base_url():
    bottle.request.environ["PATH_INFO"] = corrected_path(bottle.request.environ.get("PATH_INFO", "/"))


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


def _respond(reply: proxy.Reply):
    """The reply's status and headers set on bottle's response; its body is what the route returns."""
    response = bottle.response
    response.status = reply.status
    for name, value in reply.headers.items():
        response.set_header(name, value)
    response.content_type = reply.content_type
    return reply.body
