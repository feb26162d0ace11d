"""A fifth wire protocol in one file, for tests: Ollama's `POST /api/chat`, text only.

It shows what adding a protocol takes: one module that declares a `Protocol` (here with a
framing that is not SSE: newline-delimited JSON) and registers it. The tests use it as a
client protocol and as a provider's, in process (test_protocols.py) and over HTTP, where
`python tests/ollama_protocol.py --home-dir H serve` is `bitrouter` with it registered.
"""

import json
import sys

from bitrouter import protocols
from bitrouter.protocols import Event, Message, Part, Protocol, ProtocolError, Request, Response, Route, Usage

NAME = "ollama"


class ndjson:
    """Newline-delimited JSON: one object per line, no event names."""

    CONTENT_TYPE = "application/x-ndjson"

    class FrameTooLarge(ValueError):
        """A line grew past the parser's limit."""

    class Parser:
        """Whole lines from arbitrary chunks, as (raw, event, data) like sse.Parser's frames."""

        def __init__(self, max_frame: int = 0):
            self.max_frame, self._rest = max_frame, b""

        def frames(self, chunk: bytes) -> list:
            *lines, self._rest = (self._rest + chunk).split(b"\n")
            if self.max_frame and len(self._rest) > self.max_frame:
                raise ndjson.FrameTooLarge(f"a line is longer than {self.max_frame} bytes")
            return [(line + b"\n", "", line.decode()) for line in lines if line.strip()]

        def feed(self, chunk: bytes) -> list:
            return [(event, data) for _raw, event, data in self.frames(chunk)]

        def close(self) -> list:
            rest, self._rest = self._rest.strip(), b""
            return [("", rest.decode())] if rest else []

    @staticmethod
    def frame(data) -> bytes:
        return json.dumps(data).encode() + b"\n"


# ---------------------------------------------------------------- inbound


def model_of(body: dict, path_model: str | None = None) -> str:
    if not isinstance(body.get("messages"), list):
        raise ProtocolError("messages: an array is required")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ProtocolError("model: a non-empty string is required")
    return body["model"]


def wants_stream(body: dict) -> bool:
    return bool(body.get("stream"))


def decode_request(body: dict) -> Request:
    req = Request(model=body["model"], messages=[], stream=wants_stream(body))
    for msg in body["messages"]:
        part = Part("text", text=str(msg.get("content") or ""))
        if msg.get("role") == "system" and not req.messages:
            req.system.append(part)
        elif msg.get("role") in ("user", "assistant"):
            req.messages.append(Message(msg["role"], [part]))
        else:
            raise ProtocolError(f"role {msg.get('role')!r} is not supported here")
    return req


def encode_response(resp: Response, model: str, request: Request | None = None) -> dict:
    text = "".join(p.text for p in resp.parts if p.kind == "text")
    return {"model": model, "message": {"role": "assistant", "content": text}, **_done(resp.finish_reason, resp.usage)}


class StreamEncoder:
    def __init__(self, model: str, request: Request):
        self.model, self.reason, self.usage = model, "stop", Usage()

    def event(self, ev: Event) -> bytes:
        if ev.kind == "text":
            return ndjson.frame({"model": self.model, "message": {"role": "assistant", "content": ev.text},
                                 "done": False})
        if ev.kind == "finish":
            self.reason = ev.reason
        elif ev.kind == "usage" and ev.usage:
            self.usage = ev.usage
        return b""

    def finish_stream(self) -> bytes:
        return ndjson.frame({"model": self.model, "message": {"role": "assistant", "content": ""},
                             **_done(self.reason, self.usage)})

    def error(self, status: int, message: str) -> bytes:
        return stream_error(status, message)


def stream_error(status: int, message: str) -> bytes:
    return ndjson.frame(error_body(status, message))


def error_body(status: int, message: str) -> dict:
    return {"error": message}


def usage_of(body: dict) -> Usage:
    return Usage(input=body.get("prompt_eval_count") or 0, output=body.get("eval_count") or 0)


def stream_usage(event: str, data: str) -> Usage | None:
    line = json.loads(data)
    return usage_of(line) if line.get("done") else None


def is_final(event: str, data: str) -> bool:
    return bool(json.loads(data).get("done"))


def passthrough_body(body: dict, model_id: str, stream: bool) -> dict:
    return dict(body, model=model_id)


def drop_sealed(body: dict) -> dict:
    return body  # no reasoning proofs travel in this protocol


def relay_frame(event: str, raw: bytes, model: str) -> bytes:
    return protocols.reply_model(raw, "model", model)


# ---------------------------------------------------------------- upstream


def request_url(api_base: str, model_id: str, stream: bool) -> str:
    return api_base + "/api/chat"


def encode_request(req: Request, model_id: str) -> dict:
    messages = [{"role": "system", "content": p.text} for p in req.system]
    messages += [{"role": m.role, "content": "".join(p.text for p in m.parts if p.kind == "text")}
                 for m in req.messages if m.role in ("user", "assistant")]
    return {"model": model_id, "messages": messages, "stream": req.stream}


def decode_response(body: dict) -> Response:
    return Response(id="ollama", model=body.get("model", ""), parts=[Part("text", text=body["message"]["content"])],
                    finish_reason=_REASONS.get(body.get("done_reason"), "stop"), usage=usage_of(body))


class StreamDecoder:
    def __init__(self):
        self.started = False

    def feed(self, event: str, data: str) -> list:
        line = json.loads(data)
        if "error" in line:
            raise ProtocolError(f"upstream stream failed: {line['error']}", 502)
        out = [] if self.started else [Event("start", id="ollama", model=line.get("model", ""))]
        self.started = True
        if line.get("message", {}).get("content"):
            out.append(Event("text", text=line["message"]["content"]))
        if line.get("done"):
            out += [Event("finish", reason=_REASONS.get(line.get("done_reason"), "stop")),
                    Event("usage", usage=usage_of(line))]
        return out


def error_message(status: int, body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:300].decode("utf-8", "replace")


_REASONS = {"stop": "stop", "length": "length"}


def _done(reason: str, usage: Usage) -> dict:
    return {"done": True, "done_reason": "length" if reason == "length" else "stop",
            "prompt_eval_count": usage.input, "eval_count": usage.output}


PROTOCOL = Protocol(
    name=NAME, title="Ollama (chat)", auth="bearer", framing=ndjson,
    routes=(Route("POST", "/api/chat", "generate"),),
    model_of=model_of, wants_stream=wants_stream, decode_request=decode_request,
    encode_response=encode_response, StreamEncoder=StreamEncoder, stream_error=stream_error,
    error_body=error_body, usage_of=usage_of, stream_usage=stream_usage, is_final=is_final,
    passthrough_body=passthrough_body, drop_sealed=drop_sealed, relay_frame=relay_frame,
    request_url=request_url, encode_request=encode_request, decode_response=decode_response,
    StreamDecoder=StreamDecoder, error_message=error_message,
    text_fields={"request": ("messages",), "reply": ("message",)},  # streams are not SSE: not guarded
)


if __name__ == "__main__":  # `bitrouter` with this protocol registered
    from gevent import monkey
    monkey.patch_all()
    from bitrouter import cli
    protocols.register(PROTOCOL)
    cli.main(sys.argv[1:])
