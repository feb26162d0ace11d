"""Calling providers: pooled keep-alive connections, explicit timeouts, streamed reads.

Each call is one `http.client` exchange on a kept-alive connection of the provider's
origin (TCP_NODELAY, the connect timeout for connecting, the read timeout for every read),
with the reply's headers read into a plain dict. That is the leanest call the standard
library offers: urllib3's pool around the same exchange costs about as much again, and
the email package that http.client parses headers with costs more than the rest of the
call (docs/performance.md). Nothing is retried but a kept-alive connection the server
had closed unseen, which is replaced once by a new one.
"""

import email.utils
import http.client
import select
import socket
import ssl
import time
import zlib
from urllib.parse import urlsplit

import bitrouter
from bitrouter import StatusError

# Statuses that say "this endpoint cannot serve right now" (as does every 5xx): try the
# next endpoint. 401/403 mean BitRouter's own key for that provider is bad.
RETRYABLE_STATUSES = frozenset({401, 403, 408, 429})
MAX_TARGETS = 1024  # parsed upstream URLs kept
ONE_SEND_BYTES = 65536  # a body up to this size is sent in the same system call as its headers
# What a kept-alive connection the server closed unseen fails with when it is used again.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_READ_ERRORS = (OSError, http.client.HTTPException, ValueError)  # a body read cut off or malformed
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # Content-Encoding -> zlib wbits


class UpstreamError(StatusError):
    """A failed upstream call. status is the upstream's (None for transport failures: kind says
    which); protocol, when set, is the upstream's protocol module, whose error body it is."""

    attempts = 1

    def __init__(self, message: str, status: int | None = None, kind: str = "http",
                 retry_after: float | None = None, body: bytes = b"", headers=None, protocol=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind  # http | connect | timeout
        self.retry_after = retry_after
        self.body = body
        self.headers = headers or {}  # the upstream's reply headers
        self.protocol = protocol

    def reply(self) -> tuple[int, str, dict]:
        """An error the upstream refused the request with keeps its status; transport failures are 502."""
        return self.status or 502, self.message, {"x-bitrouter-attempts": str(self.attempts)}

    @property
    def retryable(self) -> bool:
        """Whether another endpoint may succeed where this one failed."""
        return self.status is None or self.status in RETRYABLE_STATUSES or self.status >= 500


class Pools:
    """Kept-alive connections per upstream origin, shared by every provider on that origin."""

    def __init__(self, connect_timeout: float = 5.0, read_timeout: float = 300.0, maxsize: int = 256):
        self.set_timeouts(connect_timeout, read_timeout)
        self.maxsize = maxsize  # idle connections kept per origin
        self._idle = {}  # (scheme, host, port) -> idle connections, the most recently used last
        self._targets = {}  # URL -> (scheme, host, port, path and query): providers' URLs are few and fixed
        self._transports = {}  # URL scheme -> an in-process transport (see mount)
        self._tls = None  # the TLS context, made for the first https origin
        self._poll = bitrouter.native("select", "poll")  # a check that returns at once, not via the event loop

    def set_timeouts(self, connect_timeout: float, read_timeout: float) -> None:
        """Timeouts for every call from now on, 0 for none (a reload changes them; connections are kept)."""
        self.connect_timeout, self.read_timeout = connect_timeout or None, read_timeout or None

    def mount(self, scheme: str, transport) -> None:
        """Send calls to `scheme://` URLs to `transport.send(url, headers, body)` instead of a socket;
        it returns a response with status, headers, read(), read1(n) and close() (the built-in
        mock provider is one)."""
        self._transports[scheme] = transport

    def send(self, url: str, headers: dict, body: bytes) -> "Reply":
        """POST body and return once the status line and headers arrive (the body is read later)."""
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            target = parts.scheme, parts.hostname, parts.port, parts.path + ("?" + parts.query if parts.query else "")
            if len(self._targets) >= MAX_TARGETS:  # URLs with per-request parts (Gemini's ?key=): start afresh
                self._targets.clear()
            self._targets[url] = target
        scheme, host, port, path = target
        if scheme in self._transports:
            return Reply(self._transports[scheme].send(url, headers, body))
        origin = scheme, host, port
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if self._readable(conn.sock):  # the server closed it while it was idle
                conn.close()
                continue
            try:
                return self._exchange(conn, origin, path, headers, body)
            except _STALE:  # closed by the server as it was reused: the request never reached it
                conn.close()
                break
        conn = self._connect(scheme, host, port)
        try:
            return self._exchange(conn, origin, path, headers, body)
        except _STALE as exc:
            conn.close()
            raise UpstreamError(f"{host} closed the connection: {_reason(exc)}", kind="connect") from None

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def _readable(self, sock) -> bool:
        """Whether a socket has something to read (an idle connection has nothing, unless it was closed)."""
        poller = self._poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def _connect(self, scheme: str, host: str, port: int | None):
        """A new connection to an origin (TLS for https), within the connect timeout."""
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            conn = _HTTPSConnection(host, port, timeout=self.connect_timeout, context=self._tls)
        else:
            conn = _HTTPConnection(host, port, timeout=self.connect_timeout)
        try:
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except socket.gaierror:
            raise UpstreamError(f"cannot resolve host {host} (check the provider's api_base "
                                "and this machine's DNS)", kind="connect") from None
        except TimeoutError:
            raise UpstreamError(f"timed out connecting to {host} (upstream.connect_timeout "
                                f"{self.connect_timeout:g} s)", kind="timeout") from None
        except OSError as exc:  # refused, unreachable, a TLS failure
            conn.close()
            raise UpstreamError(f"cannot connect to {host}: {_reason(exc)}", kind="connect") from None
        return conn

    def _exchange(self, conn, origin: tuple, path: str, headers: dict, body: bytes) -> "Reply":
        """Send one request on a connection and read the reply's status and headers.

        A reset or an empty reply (_STALE) propagates for send() to decide on; any other
        failure is an UpstreamError, the connection closed.
        """
        try:
            conn.sock.settimeout(self.read_timeout)
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
        except _STALE:
            raise
        except TimeoutError:
            conn.close()
            raise UpstreamError(f"timed out waiting for {origin[1]} (upstream.read_timeout "
                                f"{self.read_timeout:g} s)", kind="timeout") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise UpstreamError(f"cannot reach {origin[1]}: {_reason(exc)}", kind="connect") from None
        return Reply(response, lambda whole: self._release(origin, conn, response, whole))

    def _release(self, origin: tuple, conn, response, whole: bool) -> None:
        """Keep a connection whose reply was read to its end for the next call, unless it is closing."""
        reusable = whole and not response.will_close and (response.isclosed() or response.length == 0)
        response.close()
        idle = self._idle.setdefault(origin, [])
        if reusable and len(idle) < self.maxsize:
            idle.append(conn)
        else:
            conn.close()


class Reply:
    """An upstream response whose body has not been read yet.

    Reading the body to its end hands the connection back for the next call (done(True));
    close(), a failed read or an abandoned stream discards it (done(False)).
    """

    def __init__(self, raw, done=None):
        self._raw = raw
        self._done = done
        self.status = raw.status
        self.headers = raw.headers  # by lower-case name

    def read(self, limit: int = 0) -> bytes:
        """The whole body, up to limit bytes (0: no limit); a longer one is a 502 UpstreamError."""
        length = self.headers.get("content-length", "")
        # The usual reply, read in one call: its length is known, within the limit, and not
        # compressed (a compressed body's length says nothing of what it decodes to).
        if length.isdigit() and not (limit and int(length) > limit) and "content-encoding" not in self.headers:
            try:
                data = self._raw.read()
            except _READ_ERRORS as exc:
                self.close()
                raise _read_failed(exc) from None
            self._finished(True)
            return data
        parts, size = [], 0
        for chunk in self.chunks():
            size += len(chunk)
            if limit and size > limit:
                self.close()
                raise UpstreamError(f"upstream reply is larger than the limit of {limit} bytes "
                                    "(upstream.max_body_bytes)", status=502)
            parts.append(chunk)
        return b"".join(parts)

    def chunks(self):
        """Yield body bytes as soon as they arrive (no buffering to a fixed size), decoded if compressed."""
        raw, whole = self._raw, False
        coding = self.headers.get("content-encoding", "identity").strip().lower()
        decoder = None if coding == "identity" else zlib.decompressobj(_CODINGS.get(coding, 0))
        if decoder is not None and coding not in _CODINGS:
            self.close()
            raise UpstreamError(f"upstream sent a body in an encoding BitRouter cannot read ({coding[:40]})",
                                status=502)
        try:
            while True:
                chunk = raw.read1(65536)
                if not chunk:
                    break
                chunk = decoder.decompress(chunk) if decoder else chunk
                if chunk:
                    yield chunk
            tail = decoder.flush() if decoder else b""
            if tail:
                yield tail
            whole = True
        except _READ_ERRORS as exc:
            raise _read_failed(exc) from None
        except zlib.error as exc:
            raise UpstreamError(f"upstream body does not decode as {coding}: {exc}", status=502) from None
        finally:
            self._finished(whole)

    def close(self) -> None:
        """Abandon the body (the connection is discarded, not reused)."""
        self._finished(False)

    def error(self, protocol, limit: int = 0) -> UpstreamError:
        """A non-2xx reply as an UpstreamError: status, the protocol's reading of the body, Retry-After."""
        body = self.read(limit)
        message = protocol.error_message(self.status, body) or f"upstream returned HTTP {self.status}"
        return UpstreamError(message, status=self.status,
                             retry_after=parse_retry_after(self.headers.get("retry-after")),
                             body=body, headers=dict(self.headers), protocol=protocol)

    def _finished(self, whole: bool) -> None:
        """Hand the connection back once (reusable if the body was read whole)."""
        done, self._done = self._done, None
        if done is not None:
            done(whole)
        elif not whole:
            self._raw.close()


def parse_retry_after(value) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def send_all(sock, data) -> None:
    """`sock.sendall(data)` without gevent's look-up of the socket's send buffer size, a
    system call for every sendall: one send for what the kernel takes at once (all of a
    usual request or reply), sendall for the rest."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def _read_failed(exc) -> UpstreamError:
    """A body read that failed part-way, as an UpstreamError."""
    return UpstreamError(f"upstream read failed: {_reason(exc)}",
                         kind="timeout" if isinstance(exc, TimeoutError) else "connect")


def _reason(exc) -> str:
    """A failure's message, without an errno prefix, at most 200 characters."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:200]


class _Response(http.client.HTTPResponse):
    """http.client's response with its headers read into a dict by lower-case name.

    begin() is http.client's, but for the headers: the email package it parses them
    with costs more than the rest of a pooled call (docs/performance.md). It uses
    http.client's own status-line and header-line readers (`_read_status`, `_read_headers`,
    `_check_close`: private, unchanged since Python 3.5), so their limits and errors hold.
    """

    def begin(self):
        version, status, reason = self._read_status()
        while status == http.client.CONTINUE:  # a 100 Continue and its headers are skipped
            http.client._read_headers(self.fp)
            version, status, reason = self._read_status()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.code = self.status = status
        self.reason = reason.strip()
        self.headers = self.msg = _headers(http.client._read_headers(self.fp))
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._check_close()
        length = self.headers.get("content-length", "")
        self.length = int(length) if length.isdigit() and not self.chunked else None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # the body ends when the connection does


class _Sending:
    """http.client's connection, its replies read by _Response and its bytes sent by send_all."""

    response_class = _Response

    def send(self, data) -> None:
        if self.sock is None or not isinstance(data, (bytes, bytearray)):
            return super().send(data)  # connects, or sends a file or an iterable
        send_all(self.sock, data)

    def _send_output(self, message_body=None, encode_chunked=False):
        # http.client's sends the headers and the body in two system calls (and TCP segments):
        # a body of bytes up to ONE_SEND_BYTES goes along with its headers.
        if message_body.__class__ is not bytes or encode_chunked or len(message_body) > ONE_SEND_BYTES:
            return super()._send_output(message_body, encode_chunked)
        self._buffer.extend((b"", message_body))  # joined: the headers, a blank line, the body
        data = b"\r\n".join(self._buffer)
        del self._buffer[:]
        self.send(data)


class _HTTPConnection(_Sending, http.client.HTTPConnection):
    """A plain upstream connection."""


class _HTTPSConnection(_Sending, http.client.HTTPSConnection):
    """A TLS upstream connection."""


def _headers(lines: list) -> dict:
    """Header lines as http.client reads them, as a dict by lower-case name (repeats joined by ", ")."""
    headers, name = {}, None
    for line in lines:
        text = line.decode("iso-8859-1")
        if name and text[:1] in (" ", "\t"):  # an obsolete folded line continues the last header
            headers[name] += " " + text.strip()
            continue
        name, colon, value = text.partition(":")
        if not colon:
            name = None
            continue
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers
