"""Talking to a running BitRouter over HTTP: GET /health and the admin API.

The CLI (status, reload, route), doctor and the dashboard all use this one client.
`Client(url, home)` answers every request with a `Reply` (status and JSON body, whatever the
status); a server that cannot be reached raises `Unreachable`, an OSError whose message says
why in a few words. With a home, each request carries a fresh one-minute admin token from
the home's active account.
"""

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass

from bitrouter import Error

ADMIN_TOKEN_SECONDS = 60  # lifetime of the admin token each request carries


class Unreachable(OSError):
    """The server did not answer: refused, timed out or cut off (the message says which)."""


@dataclass(frozen=True)
class Reply:
    """One answer: its status and raw body."""

    status: int
    data: bytes

    @property
    def body(self) -> dict:
        """The body as a JSON object; {} when it is anything else."""
        try:
            body = json.loads(self.data)
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    @property
    def message(self) -> str:
        """What an error reply says (`{"error": {"message"}}`), else its status."""
        from bitrouter.protocols import error_message
        return (self.data and error_message(self.status, self.data)) or f"the server answered HTTP {self.status}"


class Client:
    """A connection pool to one BitRouter server; `close()` it, or use it as a context manager."""

    def __init__(self, url: str, home=None):
        import urllib3
        self.url = url.rstrip("/")
        self.home = home
        self._pool = urllib3.PoolManager(retries=False)

    def get(self, path: str, timeout: float = 5.0) -> Reply:
        return self.request("GET", path, timeout)

    def post(self, path: str, body=None, timeout: float = 5.0) -> Reply:
        """POST with an optional JSON body."""
        return self.request("POST", path, timeout, body)

    def delete(self, path: str, timeout: float = 5.0) -> Reply:
        return self.request("DELETE", path, timeout)

    def request(self, method: str, path: str, timeout: float, body=None) -> Reply:
        """Send one request and read the whole answer; Unreachable when there is none."""
        headers = self._headers()
        data = None
        if body is not None:
            headers["content-type"] = "application/json"
            data = json.dumps(body).encode()
        with _translated():
            resp = self._pool.request(method, self.url + path, body=data, headers=headers, timeout=timeout)
        return Reply(resp.status, resp.data)

    @contextmanager
    def stream(self, path: str, connect: float = 3.0, read: float = 120.0):
        """GET a streamed answer: yields its chunks as they arrive; Unreachable unless it is a 200."""
        import urllib3
        with _translated():
            resp = self._pool.request("GET", self.url + path, headers=self._headers(), preload_content=False,
                                      timeout=urllib3.Timeout(connect=connect, read=read))
        try:
            if resp.status != 200:
                raise Unreachable(f"HTTP {resp.status}")
            yield _chunks(resp)
        finally:
            resp.close()  # an endless stream is never drained: its connection is not reused
            resp.release_conn()

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _headers(self) -> dict:
        return admin_headers(self.home) if self.home is not None else {}


def health(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """(healthy, what GET /health said in a few words) for the server at url."""
    try:
        with Client(url) as client:
            reply = client.get("/health", timeout)
    except Unreachable as exc:
        return False, f"not answering ({exc})"
    if reply.status == 200 and reply.body.get("status") == "ok":
        return True, "ok"
    return False, f"unhealthy (HTTP {reply.status})"


def admin_headers(home) -> dict:
    """An Authorization header with a one-minute admin token from the home's active account.

    The local owner's way into its own server's /admin routes once tokens are required;
    empty when the home has no account (the server then runs open).
    """
    from bitrouter import accounts, tokens
    try:
        if accounts.active(home) is None:
            return {}
        token = tokens.mint(accounts.load_signing_key(home), scope="admin",
                            exp=int(time.time()) + ADMIN_TOKEN_SECONDS)
    except Error:  # an unreadable account: the server's refusal will say what is missing
        return {}
    return {"authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- helpers


@contextmanager
def _translated():
    """urllib3's failures as one Unreachable with a plain cause (no pool repr, no retry counts)."""
    import urllib3
    try:
        yield
    except urllib3.exceptions.NewConnectionError as exc:  # first: it is a TimeoutError, too
        raise Unreachable("connection refused" if "refused" in str(exc).lower() else _last(exc)) from None
    except urllib3.exceptions.TimeoutError:
        raise Unreachable("timed out") from None
    except urllib3.exceptions.ProtocolError:  # reset, aborted, closed mid-answer
        raise Unreachable("connection lost") from None
    except urllib3.exceptions.HTTPError as exc:
        raise Unreachable(_last(exc)) from None


def _last(exc) -> str:
    """The innermost part of an error's text: `[Errno -2] Name or service not known`."""
    return str(getattr(exc, "reason", None) or exc).split(": ")[-1]


def _chunks(resp):
    """A streamed answer's chunks as they arrive; Unreachable when it is cut off."""
    with _translated():
        yield from resp.stream(None)
