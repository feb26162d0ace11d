"""The built-in `mock` provider: answers in-process by echoing the last user message.

It needs no key and no network, which makes it the provider of `make run`, the README's
first request, tests and benchmarks. Streams arrive in several chunks, like a real model.
"""

import secrets

from bitrouter.protocols import Event, Part, Request, Response, Usage

NAME = "mock"
count_url = None  # nothing to ask: counts are estimated


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
