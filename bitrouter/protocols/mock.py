"""The built-in `mock` provider: an in-process Chat Completions API that echoes the last user message.

It needs no key and no network, which makes it the provider of `make run`, the README's
first request, tests and benchmarks. It is an ordinary upstream (api_protocol openai,
api_base mock://local): upstream.Pools hands calls to mock:// URLs to `Transport` instead
of a socket, so every request reaches it through the same encode, call and decode steps
as a real provider's. Streams arrive in several chunks, like a real model's.
"""

import io
import json
import secrets

import urllib3

from bitrouter import registry
from bitrouter.protocols import Event, Part, Request, Response, Usage, chat

SCHEME = registry.LOCAL_SCHEME  # the URL scheme Transport serves


class Transport:
    """Answers Chat Completions calls in this process, as the provider would over HTTP."""

    def send(self, url: str, headers: dict, body: bytes) -> urllib3.HTTPResponse:
        """The reply to one POST, whose body is read later, like a socket's."""
        try:
            req = chat.decode_request(json.loads(body))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _reply(400, "application/json", [json.dumps(chat.error_body(400, f"mock: {exc}")).encode()])
        if req.stream:
            return _reply(200, "text/event-stream", _frames(req))
        reply = chat.encode_response(generate(req, req.model), req.model, req)
        return _reply(200, "application/json", [json.dumps(reply).encode()])


def generate(req: Request, model_id: str) -> Response:
    """A complete answer: the echo of the last user text."""
    text = _echo(req)
    return Response(id="mock-" + secrets.token_hex(8), model=model_id, parts=[Part("text", text=text)],
                    finish_reason="stop", usage=_usage(req, text))


def stream(req: Request, model_id: str):
    """The same answer as unified stream events, one word per text event."""
    text = _echo(req)
    yield Event("start", id="mock-" + secrets.token_hex(8), model=model_id)
    words = text.split(" ")
    for i, word in enumerate(words):
        yield Event("text", text=word if i == len(words) - 1 else word + " ")
    yield Event("finish", reason="stop")
    yield Event("usage", usage=_usage(req, text))


def _frames(req: Request):
    """The stream as Chat Completions SSE, one chunk per event."""
    encoder = chat.StreamEncoder(req.model, req)
    for event in stream(req, req.model):
        frame = encoder.event(event)
        if frame:
            yield frame
    yield encoder.finish_stream()


def _reply(status: int, content_type: str, chunks) -> urllib3.HTTPResponse:
    return urllib3.HTTPResponse(body=io.BufferedReader(_Chunks(chunks)), status=status, preload_content=False,
                                headers={"content-type": content_type})


class _Chunks(io.RawIOBase):
    """A body read one produced chunk at a time (read1 sees each chunk as it comes)."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._rest:
            self._rest = next(self._chunks, b"")
        size = min(len(buffer), len(self._rest))
        buffer[:size], self._rest = self._rest[:size], self._rest[size:]
        return size


def _echo(req: Request) -> str:
    for msg in reversed(req.messages):
        if msg.role == "user":
            text = " ".join(p.text for p in msg.parts if p.kind == "text").strip()
            if text:
                return text
    return "(mock: no user text to echo)"


def _usage(req: Request, answer: str) -> Usage:
    """Whitespace word counts stand in for tokens."""
    prompt = sum(len(p.text.split()) for m in req.messages for p in m.parts if p.kind == "text")
    prompt += sum(len(p.text.split()) for p in req.system)
    return Usage(input=prompt, output=len(answer.split()))

