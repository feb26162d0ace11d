"""The server process: its state (Server), starting and serving, draining, and the connections.

`start` listens in this process and returns the `Running` handle whose stop() drains it;
`serve` runs until a signal. The HTTP routes are in app.py, the request path in proxy.py,
the admin API in admin.py; this module owns what outlives one request: the runtime built
from the configuration (swapped whole on reload), the upstream pools, the metrics, the
access gate, and gevent's connection handling (timeouts, draining, connection capacity).
"""

import collections
import contextlib
import functools
import gc
import json
import logging
import os
import re
import signal
import socket
import sys
import time

import gevent
import gevent.event
from gevent import pywsgi
from gevent.pywsgi import WSGIHandler, WSGIServer

from bitrouter import (Error, access, app, boundary, cluster, config, daemon, guardrails, hints, protocols, proxy,
                       store, workers)
from bitrouter.home import mask_url
from bitrouter.metrics import FOLD_SECONDS, Metrics, dashboard
from bitrouter.protocols import mock
from bitrouter.router import Health, Router
from bitrouter.upstream import ONE_SEND_BYTES, Pools, send_all

log = logging.getLogger("bitrouter")

FD_TARGET = 65536  # the open-file soft limit the server asks for (never above the hard limit)
FD_RESERVE = 64  # file descriptors kept for the listener, log, database and such
MAX_HEADER_LINE = 65536  # bytes in one request header line (http.client's limit, which gevent used)
MAX_HEADERS = 100  # request header fields


class Runtime:
    """Everything built from one configuration; swapped whole on reload."""

    def __init__(self, cfg, dynamic: dict, health: Health):
        self.cfg = cfg
        self.router = Router(cfg, dynamic, health)
        self.providers = cfg.providers
        self.secrets = boundary.secrets_of(cfg)  # masked in everything that leaves the process


class Server:
    """One BitRouter server: the current runtime plus state that outlives reloads.

    Usable without listening (a test or a notebook drives proxy.generate with it); close()
    it, or use it as a context manager, when done.
    """

    def __init__(self, home, cfg=None):
        self.home = home
        self.dynamic = {}
        self.health = Health()
        self.metrics = Metrics()
        self.sessions = guardrails.Sessions()  # per agent session: requests and spend, for its limits
        self.started = time.time()
        self.counts = collections.OrderedDict()  # (endpoint label, body digest) -> provider token count
        self.mode = "foreground"  # how this process runs the server: foreground | dashboard | daemon
        self.port = None  # the port actually bound, once listening
        self.connections = None  # the listener's connection counts, once listening
        cfg = cfg or config.load(home)
        self.bound = _bound_settings(cfg)  # fixed for this process: a reload only reports changes
        self.pools = Pools(cfg.upstream["connect_timeout"], cfg.upstream["read_timeout"])
        self.pools.mount(mock.SCHEME, mock.Transport())  # the built-in provider answers in process
        self.runtime = Runtime(cfg, self.dynamic, self.health)
        self.store = store.Store(cfg.database_url, shared=True)  # tokens, revocations, routes, spend totals
        self.gate = access.Gate(home, cfg, self.store, settle=self.metrics.fold)  # refuses an open public listener
        self.request_log = daemon.RequestLog(self)  # writes once server_log() has opened the log
        # Every finished request: its session's spend and its log line at once, its spend row
        # when the metrics fold it in (when serving, within metrics.FOLD_SECONDS).
        self.metrics.listeners = [self.sessions.finished, self.request_log.write]
        self.metrics.deferred_listeners = [self.gate.record]
        self.app = app.build_app(self)
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Write every pending spend row and close the database, the upstream pools and event streams."""
        if self.closed:
            return
        self.closed = True
        self.metrics.close()
        self.pools.close()
        self.gate.close()
        self.store.close()

    def dashboard(self, recent: int = 100) -> dict:
        """The `/admin/metrics` snapshot of this server (docs/tui.md)."""
        return dashboard(self.metrics, self.runtime, self.health, mode=self.mode, port=self.port,
                         started=self.started, auth_required=self.gate.required,
                         connections=self.connections, recent=recent)

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
            "database.url": mask_url(cfg.database_url)}


def serve(home, cfg=None, worker_count=None) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM, then drain in-flight requests.

    With more than one worker (`worker_count`, else `server.workers`) this process
    supervises that many server processes instead (bitrouter/workers.py).
    """
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
        owned.enter_context(daemon.server_log(home, srv, echo=mode == "foreground", requests=srv.request_log))
        try:
            address = workers.listener(host, worker[1]) if worker else (host, port)
            listener = WSGIServer(address, srv.app, log=None, error_log=log, handler_class=_Handler)
            listener.init_socket()
        except OSError as exc:
            raise Error(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        listener.in_flight = _InFlight(_connection_capacity())
        listener.srv = srv  # the handlers' timeouts come from its current configuration
        srv.connections = listener.in_flight
        srv.metrics.timer = gevent.get_hub().loop.timer(FOLD_SECONDS)  # finished requests counted in batches
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
        srv.gate.announce()
        owned.callback(srv.close)  # after the drain: every spend row written
        cluster.Sync(srv).start(owned)  # revocations and dynamic routes shared through the database
        gc.freeze()  # what start-up built lives as long as the process: full collections skip it (p99)
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
        log.info("server stopped; drained in %.2fs%s", time.perf_counter() - clock,
                 f"; {cut} request(s) still running at drain_timeout were cut off" if cut else "")
        self.owned.close()


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
        self._idle_while = functools.partial(self.server.in_flight.idle_while, self)  # for the body read

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

    def log_request(self):
        """No access line: the server logs with log=None, and requests are logged by the RequestLog."""

    # A stopping server reads no further requests on kept-alive connections, hangs up those
    # waiting for one, and tells clients not to reuse the connections it still answers on.

    def read_requestline(self):
        if self.server.closed:
            return ""
        with self._idle_while():
            try:
                return super().read_requestline()
            except socket.timeout:  # idle_timeout passed without a request
                return ""

    def read_request(self, raw_requestline):
        with self._idle_while(), gevent.Timeout(self._limit("header_timeout"), _HeadersLate):
            return super().read_request(raw_requestline)

    def MessageClass(self, rfile, _seekable=0):  # noqa: N802 (gevent's name)
        return _RequestHeaders.read(rfile)

    # gevent sends a reply's headers and its first body bytes in two system calls (and TCP
    # segments): _sendall holds the headers of a small first write and sends them with it.
    _hold_headers = False
    _held = None

    def _write_with_headers(self, data):
        self._hold_headers, self._held = 0 < len(data) <= ONE_SEND_BYTES, None
        super()._write_with_headers(data)

    def _sendall(self, data):
        # gevent's, but for upstream.send_all (its socket's sendall asks the kernel for the
        # send buffer's size on every call) and the held headers.
        if self._hold_headers:
            self._hold_headers, self._held = False, data
            return
        if self._held is not None:
            data, self._held = self._held + data, None
        try:
            send_all(self.socket, data)
        except OSError as exc:
            self.status = f"socket error: {exc}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def get_environ(self):
        environ = super().get_environ()
        environ["bitrouter.idle_while"] = self._idle_while
        return environ

    def handle_one_request(self):
        result = super().handle_one_request()
        if isinstance(result, tuple) and result[1] in _GEVENT_REPLIES:  # gevent's own empty-bodied replies
            return result[0], _raw_error(int(result[0]), _GEVENT_REPLIES[result[1]])
        return result

    def _handle_client_error(self, ex):
        super()._handle_client_error(ex)  # logs it
        if isinstance(ex, _HeadersLate):
            limit = self._limit("header_timeout")
            return "408", _raw_error(408, f"request headers did not arrive within {limit:g} s (server.header_timeout)")
        return "400", _raw_error(400, "malformed HTTP request")

    def _send_error_response_if_possible(self, error_code):
        """gevent's own 400 (bad chunking) and 500, in JSON like every other error."""
        if self.response_length:
            self.close_connection = True
            return
        message = "malformed HTTP request" if error_code == 400 else "internal error"
        body = json.dumps(app.protocol_of(self.environ.get("PATH_INFO", "")).error_body(error_code, message))
        try:
            self.start_response(f"{error_code} {'Bad Request' if error_code == 400 else 'Internal Server Error'}",
                                [("Content-Type", proxy.JSON), ("Content-Length", str(len(body))),
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


class _RequestHeaders:
    """A request's header fields, read the way RFC 9112 asks, in place of gevent's parse (the
    email package's, which took a twelfth of a request's time).

    gevent reads what it needs through `status` (not empty: answered with a 400), `get`,
    `getheader`, `typeheader`, `headers` (the lines again, for the environ) and `del`. A line
    that is not `name: value` (a name that is not a token or has white space before its
    colon, a folded continuation line) and differing Content-Length values are refused, as
    the RFC asks of a server: a proxy that reads them one way while the next hop reads them
    another is open to request smuggling.
    """

    def __init__(self, fields: list, status: str = ""):
        self.fields = fields  # (name, value) in order; the values stripped, as latin-1 text
        self.status = status
        self._first = {}
        for name, value in fields:
            self._first.setdefault(name.lower(), value)

    @classmethod
    def read(cls, rfile) -> "_RequestHeaders":
        """The header lines up to the blank one (or the end of the stream)."""
        fields = []
        while True:
            line = rfile.readline(MAX_HEADER_LINE + 1)
            if line in (b"\r\n", b"\n", b""):
                break
            if len(line) > MAX_HEADER_LINE:
                return cls([], "header line too long")
            if len(fields) == MAX_HEADERS:
                return cls([], f"more than {MAX_HEADERS} header fields")
            field = _HEADER_FIELD.fullmatch(line)
            if field is None:
                return cls([], "malformed header line")
            fields.append((field[1].decode("latin-1"), field[2].decode("latin-1")))
        if len({value for name, value in fields if name.lower() == "content-length"}) > 1:
            return cls([], "conflicting Content-Length headers")
        return cls(fields)

    def get(self, name: str, default=None):
        """The first field of that name (any case)."""
        return self._first.get(name.lower(), default)

    getheader = get

    @property
    def typeheader(self):
        return self._first.get("content-type")

    @property
    def headers(self):
        """The fields as header lines, which gevent's environ is built from."""
        return [f"{name}: {value}\r\n" for name, value in self.fields]

    def __delitem__(self, name: str) -> None:
        lower = name.lower()
        if lower not in self._first:
            raise KeyError(name)
        del self._first[lower]
        self.fields = [(n, v) for n, v in self.fields if n.lower() != lower]


# One header line: a token (RFC 9110's field-name), a colon, the value without its surrounding
# white space. Control characters and non-ASCII bytes in values are the app's to refuse
# (boundary.check_headers), in the client's own protocol.
_HEADER_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*\r?\n")


class _HeadersLate(ValueError):
    """A client too slow to send its request headers (gevent answers ValueErrors from reading
    them with a 400; this one becomes a 408). A class, raised by the deadline only when it
    passes: nothing is built for the requests that are on time."""


# gevent's empty-bodied error replies, by the bytes it would send, and what they mean.
_GEVENT_REPLIES = {
    pywsgi._BAD_REQUEST_RESPONSE: "malformed HTTP request",
    pywsgi._REQUEST_TOO_LONG_RESPONSE: f"request line longer than {pywsgi.MAX_REQUEST_LINE} bytes",
}


def _raw_error(status: int, message: str) -> bytes:
    """A whole HTTP error response in OpenAI's error shape, for errors before any request exists."""
    body = json.dumps(protocols.get(app.FALLBACK).error_body(status, message)).encode()
    reason = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {proxy.JSON}\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class _InFlight:
    """Counts connections and requests being answered, so stopping can wait for exactly those.

    Connections not yet sending a request are idle; when open connections reach
    `capacity` (the fd soft limit less a reserve), the longest idle one is hung up, so a
    flood of idle or slow connections cannot lock new clients out.
    """

    def __init__(self, capacity: int = 0):
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

    def idle_while(self, handler) -> "_Idle":
        """Count handler as idle (and first to go at capacity) for a `with` block."""
        return _Idle(self.waiting, handler)


class _Idle:
    """The `with` block of _InFlight.idle_while (a class: it runs two or three times a request)."""

    __slots__ = ("waiting", "handler")

    def __init__(self, waiting: dict, handler):
        self.waiting, self.handler = waiting, handler

    def __enter__(self) -> None:
        self.waiting[self.handler] = None

    def __exit__(self, *exc) -> None:
        self.waiting.pop(self.handler, None)


def main() -> None:
    """`python -m bitrouter.server [global options]`: serve this home in the foreground.

    It becomes `python -m bitrouter serve` (same process id): flags, errors and hints are the
    CLI's, and the server module never imports the CLI that sits above it.
    """
    os.execv(sys.executable, [sys.executable, "-m", "bitrouter", "serve", *sys.argv[1:]])


if __name__ == "__main__":
    main()
