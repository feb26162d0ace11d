"""Calling providers: pooled keep-alive connections, explicit timeouts, streamed reads.

The hot path uses urllib3's connection pools directly (the transport underneath
`requests`): a pooled urlopen costs a fraction of a `requests.Session.request`, and the
proxy makes one per client request. urllib3 sets TCP_NODELAY on every connection.
"""

import email.utils
import time
from urllib.parse import urlsplit

import urllib3

from bitrouter import StatusError
from urllib3.exceptions import (HTTPError, NameResolutionError, NewConnectionError, ProtocolError,
                                ReadTimeoutError, TimeoutError)

# Statuses that say "this endpoint cannot serve right now" (as does every 5xx): try the
# next endpoint. 401/403 mean BitRouter's own key for that provider is bad.
RETRYABLE_STATUSES = frozenset({401, 403, 408, 429})
MAX_TARGETS = 1024  # parsed upstream URLs kept
NO_RETRIES = urllib3.Retry(total=False, redirect=False)  # what retries=False means, built once, not per call


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
    """One keep-alive pool per upstream origin, shared by every provider on that origin."""

    def __init__(self, connect_timeout: float = 5.0, read_timeout: float = 300.0, maxsize: int = 256):
        self.set_timeouts(connect_timeout, read_timeout)
        self.maxsize = maxsize
        self._pools = {}
        self._targets = {}  # URL -> (its parts, path and query): providers' URLs are few and fixed
        self._transports = {}  # URL scheme -> an in-process transport (see mount)

    def set_timeouts(self, connect_timeout: float, read_timeout: float) -> None:
        """Timeouts for every call from now on (a reload changes them; pools are kept)."""
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)

    def mount(self, scheme: str, transport) -> None:
        """Send calls to `scheme://` URLs to `transport.send(url, headers, body)` instead of a socket;
        it returns a urllib3 response (the built-in mock provider is one)."""
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
        pool = self._pool(scheme, host, port)
        try:
            raw = pool.urlopen("POST", path, body=body, headers=headers, retries=NO_RETRIES, redirect=False,
                               timeout=self.timeout, preload_content=False, decode_content=True)
        except NameResolutionError:  # urllib3 files these under timeouts; they are not
            raise UpstreamError(f"cannot resolve host {host} (check the provider's api_base "
                                "and this machine's DNS)", kind="connect") from None
        except NewConnectionError as exc:
            raise UpstreamError(f"cannot connect to {host}: {_reason(exc)}", kind="connect") from None
        except (TimeoutError, ReadTimeoutError) as exc:
            raise UpstreamError(f"timed out connecting to {host}: {_reason(exc)}",
                                kind="timeout") from None
        except HTTPError as exc:
            raise UpstreamError(f"cannot reach {host}: {_reason(exc)}",
                                kind="connect") from None
        return Reply(raw)

    def close(self) -> None:
        """Close every pooled connection."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, scheme: str, host: str, port: int | None):
        """The keep-alive pool of an origin, made on first use."""
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            cls = urllib3.HTTPSConnectionPool if scheme == "https" else urllib3.HTTPConnectionPool
            pool = cls(host, port, maxsize=self.maxsize, block=False, timeout=self.timeout,
                       retries=False)
            self._pools[key] = pool
        return pool


class Reply:
    """An upstream response whose body has not been read yet."""

    def __init__(self, raw):
        self._raw = raw
        self.status = raw.status
        self.headers = raw.headers

    def read(self, limit: int = 0) -> bytes:
        """The whole body, up to limit bytes (0: no limit); a longer one is a 502 UpstreamError."""
        length = self.headers.get("content-length", "")
        # The usual reply, read in one call: its length is known, within the limit, and not
        # compressed (a compressed body's length says nothing of what it decodes to).
        if length.isdigit() and not (limit and int(length) > limit) and "content-encoding" not in self.headers:
            try:
                return self._raw.read()
            except (ProtocolError, ReadTimeoutError, HTTPError, OSError) as exc:
                raise _read_failed(exc) from None
            finally:
                self._raw.release_conn()
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
        """Yield body bytes as soon as they arrive (no buffering to a fixed size)."""
        raw = self._raw
        try:
            while True:
                chunk = raw.read1(65536)
                if not chunk:
                    return
                yield chunk
        except (ProtocolError, ReadTimeoutError, HTTPError, OSError) as exc:
            raise _read_failed(exc) from None
        finally:
            raw.release_conn()

    def close(self) -> None:
        """Abandon the body (the connection is discarded, not reused)."""
        self._raw.close()
        self._raw.release_conn()

    def error(self, protocol, limit: int = 0) -> UpstreamError:
        """A non-2xx reply as an UpstreamError: status, the protocol's reading of the body, Retry-After."""
        body = self.read(limit)
        message = protocol.error_message(self.status, body) or f"upstream returned HTTP {self.status}"
        return UpstreamError(message, status=self.status,
                             retry_after=parse_retry_after(self.headers.get("retry-after")),
                             body=body, headers=dict(self.headers), protocol=protocol)


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


def _read_failed(exc) -> UpstreamError:
    """A body read that failed part-way, as an UpstreamError."""
    return UpstreamError(f"upstream read failed: {_reason(exc)}",
                         kind="timeout" if isinstance(exc, ReadTimeoutError) else "connect")


def _reason(exc) -> str:
    """The innermost useful message of a urllib3 exception."""
    reason = getattr(exc, "reason", None) or exc
    return str(reason).split(": ", 1)[-1][:200]
