"""Fake upstream providers: small real HTTP servers on loopback, steered by the test.

A FakeUpstream answers every request with its current `behaviour` (a function taking the
parsed request and returning a Reply), records what it received, and supports the
switches the tests need: status codes, delays, slow streams and mid-stream disconnects.
"""

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    """What the fake sends: a JSON body, or SSE frames (optionally slow or cut short)."""

    status: int = 200
    body: object = None  # dict -> JSON; bytes are sent as they are
    frames: list = None  # list of bytes (already framed SSE)
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # before the status line
    frame_delay: float = 0.0  # between frames
    disconnect_after: int | None = None  # drop the connection after this many frames
    gate: threading.Event | None = None  # frames after the first wait for this event
    stream_type: str = "text/event-stream"  # the content-type frames go with


@dataclass
class Received:
    """One request as the fake saw it."""

    method: str
    path: str
    headers: dict
    body: dict | None


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog of 5 resets connections under load


class FakeUpstream:
    """A threaded HTTP server on 127.0.0.1 with a replaceable behaviour."""

    def __init__(self, behaviour=None):
        self.behaviour = behaviour or (lambda req: Reply(body={}))
        self.received = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._serve(None)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                self._serve(json.loads(raw) if raw else None)

            def _serve(self, body):
                req = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                fake.received.append(req)
                fake.write(self, fake.behaviour(req))

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def write(handler, reply: Reply) -> None:
        """Send one Reply, honouring its delays and disconnect switch."""
        if reply.delay:
            time.sleep(reply.delay)
        handler.send_response(reply.status)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        if reply.frames is None:  # a dict body is JSON; bytes go as they are (with the reply's content-type)
            raw = isinstance(reply.body, bytes)
            data = reply.body if raw else json.dumps(reply.body if reply.body is not None else {}).encode()
            if not raw:
                handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        handler.send_header("content-type", reply.stream_type)
        handler.send_header("connection", "close")
        handler.end_headers()
        handler.close_connection = True
        for i, frame in enumerate(reply.frames):
            if reply.disconnect_after is not None and i >= reply.disconnect_after:
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            if i and reply.gate is not None:
                reply.gate.wait(10)
            elif i and reply.frame_delay:
                time.sleep(reply.frame_delay)
            handler.wfile.write(frame)
            handler.wfile.flush()


# ---------------------------------------------------------------- OpenAI Chat Completions


def chat_completion(text="hello from fake", model="fake-model", tool_calls=None, usage=None):
    """A chat.completion body."""
    message = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if tool_calls else "stop"}],
            "usage": usage or {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


def chat_stream(words=("hello", " from", " fake"), model="fake-model", usage=True):
    """SSE frames of a chat completion stream, ending with [DONE]."""
    def chunk(delta, finish=None, **extra):
        body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return b"data: " + json.dumps(body).encode() + b"\n\n"
    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"content": w}) for w in words]
    frames.append(chunk({}, "stop"))
    if usage:
        frames.append(b"data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                              "created": 1, "model": model, "choices": [],
                                              "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                                        "total_tokens": 8}}).encode() + b"\n\n")
    return frames + [b"data: [DONE]\n\n"]


def openai_chat(req: Received) -> Reply:
    """Default OpenAI behaviour: a streamed or plain completion echoing the model asked for."""
    body = req.body or {}
    if body.get("stream"):
        return Reply(frames=chat_stream(model=body.get("model", "fake-model")))
    return Reply(body=chat_completion(model=body.get("model", "fake-model")))


def error(status: int, message: str = "fake failure", headers=None) -> Reply:
    """An OpenAI-shaped error reply."""
    return Reply(status=status, body={"error": {"message": message, "type": "fake_error"}},
                 headers=headers or {})


# ---------------------------------------------------------------- OpenAI Responses
# Written out by hand from the API reference (not produced by bitrouter code), so tests
# compare BitRouter against the real wire format rather than against itself.

RESPONSES_USAGE = {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 4},
                   "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 18}


def responses_body(text="hello from fake", model="fake-model", calls=(), reasoning="", usage=None,
                   status="completed", incomplete=None):
    """A Responses `response` object: optional reasoning item, a message, function_call items.

    calls: (call_id, name, arguments) triples.
    """
    output = []
    if reasoning:
        output.append({"id": "rs_fake", "type": "reasoning", "encrypted_content": "enc-fake",
                       "summary": [{"type": "summary_text", "text": reasoning}]})
    if text:
        output.append({"id": "msg_fake", "type": "message", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": text, "annotations": []}]})
    output += [{"id": f"fc_fake{i}", "type": "function_call", "status": "completed", "call_id": call_id,
                "name": name, "arguments": arguments} for i, (call_id, name, arguments) in enumerate(calls)]
    return {"id": "resp_fake", "object": "response", "created_at": 1, "status": status, "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None, "model": model,
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": usage or RESPONSES_USAGE}


def responses_frames(words=("hello", " from", " fake"), model="fake-model", calls=(), reasoning="",
                     usage=None, status="completed", incomplete=None, fail=None):
    """SSE frames of a Responses stream as OpenAI sends them: `event:` lines, sequence numbers.

    The stream ends with response.completed (or .incomplete); `fail` (a message) ends it
    with response.failed instead, after the text.
    """
    seq = iter(range(1000))

    def ev(kind, **fields):
        body = {"type": kind, "sequence_number": next(seq), **fields}
        return f"event: {kind}\ndata: {json.dumps(body)}\n\n".encode()

    final = responses_body("".join(words), model, calls, reasoning, usage, status, incomplete)
    shell = {**final, "status": "in_progress", "output": [], "usage": None}
    frames = [ev("response.created", response=shell), ev("response.in_progress", response=shell)]
    for index, item in enumerate(final["output"]):
        if item["type"] == "reasoning":
            frames.append(ev("response.output_item.added", output_index=index, item={**item, "summary": []}))
            frames.append(ev("response.reasoning_summary_part.added", item_id=item["id"], output_index=index,
                             summary_index=0, part={"type": "summary_text", "text": ""}))
            frames.append(ev("response.reasoning_summary_text.delta", item_id=item["id"], output_index=index,
                             summary_index=0, delta=reasoning))
            frames.append(ev("response.reasoning_summary_text.done", item_id=item["id"], output_index=index,
                             summary_index=0, text=reasoning))
        elif item["type"] == "message":
            frames.append(ev("response.output_item.added", output_index=index,
                             item={**item, "status": "in_progress", "content": []}))
            frames.append(ev("response.content_part.added", item_id=item["id"], output_index=index,
                             content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
            frames += [ev("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0,
                          delta=w, logprobs=[]) for w in words]
            if fail:
                return frames + [ev("response.failed", response={**final, "status": "failed", "output": [],
                                                                   "error": {"code": "server_error",
                                                                             "message": fail}})]
            frames.append(ev("response.output_text.done", item_id=item["id"], output_index=index,
                             content_index=0, text=item["content"][0]["text"], logprobs=[]))
            frames.append(ev("response.content_part.done", item_id=item["id"], output_index=index,
                             content_index=0, part=item["content"][0]))
        else:
            frames.append(ev("response.output_item.added", output_index=index,
                             item={**item, "status": "in_progress", "arguments": ""}))
            half = len(item["arguments"]) // 2
            for piece in (item["arguments"][:half], item["arguments"][half:]):
                frames.append(ev("response.function_call_arguments.delta", item_id=item["id"],
                                 output_index=index, delta=piece))
            frames.append(ev("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                             arguments=item["arguments"]))
        frames.append(ev("response.output_item.done", output_index=index, item=item))
    terminal = "response.incomplete" if status == "incomplete" else "response.completed"
    return frames + [ev(terminal, response=final)]


def openai_responses(req: Received) -> Reply:
    """Default Responses behaviour: a streamed or plain answer echoing the model asked for."""
    body = req.body or {}
    if body.get("stream"):
        return Reply(frames=responses_frames(model=body.get("model", "fake-model")))
    return Reply(body=responses_body(model=body.get("model", "fake-model")))


# ---------------------------------------------------------------- Anthropic Messages
# Written out by hand from the Messages API reference, like the sections above.

ANTHROPIC_USAGE = {"input_tokens": 10, "cache_read_input_tokens": 20, "cache_creation_input_tokens": 5,
                   "output_tokens": 7, "output_tokens_details": {"thinking_tokens": 3}}
TOOL_ARGS = {"city": "Paris"}  # what the fakes' models pass when they call a tool


def anthropic_message(text="hello from fake", model="fake-claude", calls=(), thinking="", stop_reason=None,
                      usage=None):
    """A Messages `message`: an optional thinking block, a text block, tool_use blocks.

    calls: (id, name, input) triples.
    """
    content = [{"type": "thinking", "thinking": thinking, "signature": "sig-fake"}] if thinking else []
    if text:
        content.append({"type": "text", "text": text})
    content += [{"type": "tool_use", "id": call_id, "name": name, "input": args} for call_id, name, args in calls]
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason or ("tool_use" if calls else "end_turn"), "stop_sequence": None,
            "usage": usage or ANTHROPIC_USAGE}


def anthropic_frames(words=("hello", " from", " fake"), model="fake-claude", calls=(), thinking="",
                     stop_reason=None, usage=None, fail=None):
    """SSE frames of a Messages stream as Anthropic sends them: `event:` lines, a ping, indexed blocks.

    message_delta carries only output_tokens, as older API versions and compatible
    providers do; `fail` (a message) ends the stream with `event: error` after the text.
    """
    def ev(kind, **fields):
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()

    usage = usage or ANTHROPIC_USAGE
    final = anthropic_message("".join(words), model, calls, thinking, stop_reason, usage)
    start = {**final, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    frames = [ev("message_start", message=start), ev("ping")]
    for index, block in enumerate(final["content"]):
        if block["type"] == "thinking":
            frames.append(ev("content_block_start", index=index,
                             content_block={"type": "thinking", "thinking": "", "signature": ""}))
            frames.append(ev("content_block_delta", index=index,
                             delta={"type": "thinking_delta", "thinking": thinking}))
            frames.append(ev("content_block_delta", index=index,
                             delta={"type": "signature_delta", "signature": "sig-fake"}))
        elif block["type"] == "text":
            frames.append(ev("content_block_start", index=index, content_block={"type": "text", "text": ""}))
            frames += [ev("content_block_delta", index=index, delta={"type": "text_delta", "text": w})
                       for w in words]
            if fail:
                return frames + [ev("error", error={"type": "overloaded_error", "message": fail})]
        else:
            frames.append(ev("content_block_start", index=index, content_block={**block, "input": {}}))
            args = json.dumps(block["input"])
            for piece in (args[:len(args) // 2], args[len(args) // 2:]):
                frames.append(ev("content_block_delta", index=index,
                                 delta={"type": "input_json_delta", "partial_json": piece}))
        frames.append(ev("content_block_stop", index=index))
    frames.append(ev("message_delta", delta={"stop_reason": final["stop_reason"], "stop_sequence": None},
                     usage={"output_tokens": usage["output_tokens"]}))
    return frames + [ev("message_stop")]


def anthropic_upstream(req: Received) -> Reply:
    """Default Anthropic behaviour: call the first tool offered unless the last turn answers a
    call; after a tool result, say what the tool said; otherwise `hello from fake`."""
    body = req.body or {}
    model = body.get("model", "fake-claude")
    last = (body.get("messages") or [{}])[-1].get("content")
    results = [b for b in last if b.get("type") == "tool_result"] if isinstance(last, list) else []
    calls, words = (), ("hello", " from", " fake")
    if results:
        content = results[-1].get("content")
        said = content if isinstance(content, str) else "".join(b.get("text", "") for b in content or [])
        words = ("tool said: ", said)
    elif body.get("tools"):
        calls, words = (("toolu_fake1", body["tools"][0]["name"], TOOL_ARGS),), ()
    if body.get("stream"):
        return Reply(frames=anthropic_frames(words, model, calls))
    return Reply(body=anthropic_message("".join(words), model, calls))


def anthropic_error(status: int, message: str = "fake failure", kind: str = "invalid_request_error") -> Reply:
    """An Anthropic-shaped error reply."""
    return Reply(status=status, body={"type": "error", "error": {"type": kind, "message": message}})


# ---------------------------------------------------------------- Google Gemini
# Written out by hand from the Gemini API reference, like the sections above.

GEMINI_USAGE = {"promptTokenCount": 30, "cachedContentTokenCount": 20, "candidatesTokenCount": 4,
                "thoughtsTokenCount": 3, "totalTokenCount": 37}


def gemini_response(text="hello from fake", model="fake-gemini", calls=(), thought="", finish="STOP",
                    usage=None):
    """A GenerateContentResponse: an optional thought part, a text part, functionCall parts.

    calls: (name, args) pairs; Gemini gives them no ids and says STOP for them.
    """
    parts = [{"text": thought, "thought": True, "thoughtSignature": "c2lnLWZha2U="}] if thought else []
    if text:
        parts.append({"text": text})
    parts += [{"functionCall": {"name": name, "args": args}} for name, args in calls]
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
            "usageMetadata": usage or GEMINI_USAGE, "modelVersion": model, "responseId": "resp-fake"}


def gemini_frames(words=("hello", " from", " fake"), model="fake-gemini", calls=(), thought="", finish="STOP",
                  usage=None, fail=None):
    """`data:` frames of a streamGenerateContent?alt=sse reply: no event lines and no [DONE].

    Every frame carries running usage, the last one (with the finish reason) the totals;
    `fail` (a message) ends the stream with an error object after the text.
    """
    usage = usage or GEMINI_USAGE

    def frame(parts, **extra):
        candidate = {"content": {"role": "model", "parts": parts}, "index": 0}
        running = {"promptTokenCount": usage["promptTokenCount"], "totalTokenCount": usage["promptTokenCount"]}
        body = {"candidates": [{**candidate, **extra}], "usageMetadata": running, "modelVersion": model,
                "responseId": "resp-fake"}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    frames = [frame([{"text": thought, "thought": True}])] if thought else []
    frames += [frame([{"text": w}]) for w in words]
    if fail:
        return frames + [b"data: " + json.dumps({"error": {"code": 503, "message": fail,
                                                           "status": "UNAVAILABLE"}}).encode() + b"\n\n"]
    last = [{"functionCall": {"name": name, "args": args}} for name, args in calls] or [{"text": ""}]
    body = json.loads(frame(last, finishReason=finish)[6:])
    body["usageMetadata"] = usage
    return frames + [b"data: " + json.dumps(body).encode() + b"\n\n"]


def gemini_upstream(req: Received) -> Reply:
    """Default Gemini behaviour, steered like anthropic_upstream; streams when the path says so."""
    body = req.body or {}
    model = req.path.split("/models/", 1)[-1].split(":", 1)[0]
    parts = ((body.get("contents") or [{}])[-1]).get("parts") or []
    results = [p["functionResponse"] for p in parts if "functionResponse" in p]
    tools = [fd for t in body.get("tools") or [] for fd in t.get("functionDeclarations") or []]
    calls, words = (), ("hello", " from", " fake")
    if results:
        said = results[-1].get("response") or {}
        words = ("tool said: ", str(said.get("output", said)))
    elif tools:
        calls, words = ((tools[0]["name"], TOOL_ARGS),), ()
    if ":streamGenerateContent" in req.path:
        return Reply(frames=gemini_frames(words, model, calls))
    return Reply(body=gemini_response("".join(words), model, calls))


def gemini_error(status: int, message: str = "fake failure", code: str = "INVALID_ARGUMENT") -> Reply:
    """A Google-shaped error reply."""
    return Reply(status=status, body={"error": {"code": status, "message": message, "status": code}})


# ---------------------------------------------------------------- several protocols at once

API_PATHS = {"anthropic": "", "openai": "/v1", "google": ""}  # what each built-in's api_base ends with


def protocol_config(fakes: dict, model_id: str) -> dict:
    """A config with a provider `up-<protocol>` per fake (deriving that built-in, pointing at the
    fake) and an alias `via-<protocol>` to `model_id` on it."""
    providers = {f"up-{name}": {"derives": name, "api_base": fake.url + API_PATHS[name], "api_key": f"key-{name}"}
                 for name, fake in fakes.items()}
    models = {f"via-{name}": {"endpoints": [{"provider": f"up-{name}", "model_id": model_id}]} for name in fakes}
    return {"providers": providers, "models": models}


class Fleet:
    """Fake upstreams by protocol name, each with a default behaviour that reset() restores."""

    def __init__(self, defaults: dict):
        self.defaults = defaults
        self.fakes = {name: FakeUpstream(behaviour) for name, behaviour in defaults.items()}

    def __enter__(self):
        for fake in self.fakes.values():
            fake.__enter__()
        return self

    def __exit__(self, *exc):
        for fake in self.fakes.values():
            fake.__exit__(*exc)

    def __getitem__(self, name: str) -> FakeUpstream:
        return self.fakes[name]

    def reset(self) -> None:
        """Default behaviours again, and nothing received."""
        for name, fake in self.fakes.items():
            fake.behaviour, fake.received = self.defaults[name], []
