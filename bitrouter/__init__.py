"""BitRouter: a local LLM router for agent runtimes."""

__version__ = "0.1.0"


class Error(Exception):
    """A problem the user can fix; the CLI prints it as one `error: ...` line."""


def did_you_mean(word, choices, cutoff: float = 0.6) -> str:
    """` (did you mean 'x'?)` for an Error message when one of `choices` is close to `word`, else ""."""
    import difflib
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def native(module: str, name: str):
    """The interpreter's own object, even after gevent's monkey-patching replaced it."""
    import importlib
    import sys
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


class StatusError(Exception):
    """The base of every error on the request path: it knows how to answer the client.

    The server turns any of them into one error body in the client's own protocol
    (proxy.classify -> proxy.error_reply); anything else that escapes is a bug, logged and answered as a 500.

        StatusError                    reply() -> (status, message, headers)
        +-- proxy.HttpError            BitRouter's own refusals: 401/403/402 (access), 408, 413, 422
        +-- boundary.Invalid           400: a body, header or name outside the boundary's limits
        +-- protocols.ProtocolError    400: a request its protocol cannot read or express;
        |                              502: an upstream stream that says it failed
        +-- router.RouteError          404: an unknown model; 503: no endpoint can be called
        +-- router.AllFailed           502 / 503 / 504 once every endpoint failed (Retry-After)
        +-- upstream.UpstreamError     one failed upstream call: the upstream's own status when
                                       it refused the request (not retried), else 502 / 504

    `attempts` says how many endpoints were tried before the error (x-bitrouter-attempts).
    """

    status = 500
    attempts = 0

    def __init__(self, message: str, status: int | None = None, headers=None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})

    def reply(self) -> tuple[int, str, dict]:
        """The HTTP status, message and headers to answer the client with."""
        return self.status, str(self), self.headers
