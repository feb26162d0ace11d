"""OpenAI Chat Completions (`POST /v1/chat/completions`), as served to clients and called upstream."""

import json
import re
import secrets
import time

from bitrouter.protocols import (Event, Message, Part, Protocol, ProtocolError, Reasoning, Request, Response,
                                 ResponseFormat, Route, Tool, ToolChoice, Usage, add_system, content_items, data_url,
                                 extension_of, finish_reason, media, media_part, native_proof, proof, reply_model,
                                 set_given, set_options, sse, type_of)
from bitrouter.protocols import error_message  # the upstream error reader, shared: {"error": {...}}

NAME = "openai"
MODEL_FIELD = "model"  # where a reply names its model: the client's name is put back

# ---------------------------------------------------------------- inbound


def model_of(body: dict, path_model: str | None = None) -> str:
    """The requested model name; a missing one is a 400."""
    _require(body, "messages", list)
    return _require(body, "model", str)


def wants_stream(body: dict) -> bool:
    """Whether the client asked for an SSE stream."""
    return bool(body.get("stream"))


def decode_request(body: dict) -> Request:
    """Chat Completions request -> unified Request."""
    req = Request(model=body["model"], messages=[], stream=bool(body.get("stream")))
    names = {}  # tool_call_id -> function name, so tool results can carry the name
    for i, msg in enumerate(body["messages"]):
        if not isinstance(msg, dict):
            raise ProtocolError(f"messages[{i}] must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            add_system(req, _content_parts(msg.get("content"), i))
        elif role == "user":
            req.messages.append(Message("user", _content_parts(msg.get("content"), i)))
        elif role == "assistant":
            parts = []
            if msg.get("reasoning_content"):
                parts.append(Part("reasoning", text=msg["reasoning_content"]))
            parts += _content_parts(msg.get("content"), i)
            if msg.get("refusal"):
                parts.append(Part("text", text=msg["refusal"]))
            for call in msg.get("tool_calls") or []:
                parts.append(_tool_call(call))
                names[parts[-1].id] = parts[-1].name
            req.messages.append(Message("assistant", parts))
        elif role in ("tool", "function"):
            call_id = msg.get("tool_call_id") or msg.get("name") or ""
            content = _content_parts(msg.get("content"), i)
            req.messages.append(Message("tool", [Part("tool_result", id=call_id, content=content,
                                                      name=names.get(call_id, msg.get("name", "")))]))
        else:
            raise ProtocolError(f"messages[{i}].role: unknown role {role!r}")
    for tool in body.get("tools") or []:
        fn = tool.get("function") or {}
        req.tools.append(Tool(fn.get("name", ""), fn.get("description", ""), fn.get("parameters") or {}))
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        req.tool_choice = ToolChoice("required", (choice.get("function") or {}).get("name", ""))
    elif choice in ("auto", "none", "required"):
        req.tool_choice = ToolChoice(choice)
    req.parallel_tool_calls = body.get("parallel_tool_calls")
    req.max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    req.temperature = body.get("temperature")
    req.top_p = body.get("top_p")
    stop = body.get("stop")
    req.stop = [stop] if isinstance(stop, str) else list(stop or [])
    req.response_format = _decode_format(body.get("response_format"))
    if body.get("reasoning_effort"):
        req.reasoning = Reasoning(effort=body["reasoning_effort"])
    req.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    req.user = body.get("user")
    return req


def encode_response(resp: Response, model: str, request: Request | None = None) -> dict:
    """Unified Response -> chat.completion object."""
    text = "".join(p.text for p in resp.parts if p.kind == "text")
    message = {"role": "assistant", "content": text or None}
    reasoning = "".join(p.text for p in resp.parts if p.kind == "reasoning")
    if reasoning:
        message["reasoning_content"] = reasoning
    calls = [{"id": p.id, "type": "function", "function": {"name": p.name, "arguments": p.arguments}}
             for p in resp.parts if p.kind == "tool_call"]
    if calls:
        message["tool_calls"] = calls
    return {"id": _chat_id(resp.id), "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": _finish_out(resp.finish_reason)}],
            "usage": encode_usage(resp.usage)}


class StreamEncoder:
    """Unified stream events -> chat.completion.chunk SSE frames, ending with [DONE]."""

    def __init__(self, model: str, request: Request):
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.model = model
        self.created = int(time.time())
        self.include_usage = request.include_usage
        self.usage = None
        self.finish_reason = None
        self.tool_index = {}  # unified tool index -> chat tool_calls index

    def event(self, ev: Event) -> bytes:
        """One unified event as a chat.completion.chunk frame; finish and usage wait for finish_stream."""
        if ev.kind == "start":  # the model keeps the name the client asked for
            return self._chunk({"role": "assistant", "content": ""})
        if ev.kind == "text":
            return self._chunk({"content": ev.text})
        if ev.kind == "reasoning":  # Chat has no place for a signature
            return self._chunk({"reasoning_content": ev.text}) if ev.text else b""
        if ev.kind == "tool_call":
            index = self.tool_index.setdefault(ev.index, len(self.tool_index))
            return self._chunk({"tool_calls": [{"index": index, "id": ev.id, "type": "function",
                                                "function": {"name": ev.name, "arguments": ""}}]})
        if ev.kind == "tool_args":
            index = self.tool_index.setdefault(ev.index, len(self.tool_index))
            return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": ev.text}}]})
        if ev.kind == "finish":
            self.finish_reason = ev.reason
        elif ev.kind == "usage":
            self.usage = ev.usage
        return b""

    def finish_stream(self) -> bytes:
        """The chunk with the finish reason, the usage chunk if the client asked for it, then [DONE]."""
        out = self._chunk({}, _finish_out(self.finish_reason))
        if self.include_usage:
            out += sse.frame({**self._base(), "choices": [], "usage": encode_usage(self.usage or Usage())})
        return out + b"data: [DONE]\n\n"

    def _base(self) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model}

    def _chunk(self, delta: dict, finish=None) -> bytes:
        return sse.frame({**self._base(), "choices": [{"index": 0, "delta": delta,
                                                        "finish_reason": finish}]})

    def error(self, status: int, message: str) -> bytes:
        """End a broken stream with the protocol's in-band error (no stream state to close)."""
        return stream_error(status, message)


def stream_error(status: int, message: str) -> bytes:
    """The in-band error that ends a broken stream."""
    return sse.frame(error_body(status, message)) + b"data: [DONE]\n\n"


def error_body(status: int, message: str) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"),
                      "param": None, "code": _ERROR_CODES.get(status)}}


def usage_of(body: dict) -> Usage:
    """Usage from a chat.completion (or final chunk) body."""
    u = body.get("usage") or {}
    return Usage(input=u.get("prompt_tokens") or 0, output=u.get("completion_tokens") or 0,
                 cache_read=(u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
                 reasoning=(u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)


def stream_usage(event: str, data: str) -> Usage | None:
    """Usage carried by one relayed SSE event, if any (cheap check before parsing).

    With include_usage every chunk has a `usage` key, null on all but the last, so only a
    usage object is worth parsing.
    """
    if not _USAGE_OBJECT.search(data):
        return None
    body = json.loads(data)
    return usage_of(body) if body.get("usage") else None


def is_final(event: str, data: str) -> bool:
    """Whether a relayed SSE event is the one that properly ends the stream."""
    return data == "[DONE]"


def relay_frame(event: str, raw: bytes, model: str) -> bytes:
    """A passed-through chunk as the client gets it: every chunk names the client's model."""
    return reply_model(raw, MODEL_FIELD, model)


def drop_sealed(body: dict) -> dict:
    """The body without proofs sealed for other providers: Chat has no place for one."""
    return body


def passthrough_body(body: dict, model_id: str, stream: bool) -> dict:
    """The client's own body for a same-protocol upstream: only `model` changes.

    Streams also ask for usage so that the request can be billed; clients then see the
    final usage chunk (empty `choices`) that the API documents for include_usage.
    """
    out = dict(body, model=model_id)
    if stream and not (body.get("stream_options") or {}).get("include_usage"):
        out["stream_options"] = dict(body.get("stream_options") or {}, include_usage=True)
    return out


def model_list(models: list) -> dict:
    """`GET /v1/models` reply (OpenAI's list format) for the served (model name, owner) pairs."""
    now = int(time.time())
    return {"object": "list", "data": [{"id": name, "object": "model", "created": now, "owned_by": owner}
                                       for name, owner in models]}


# ---------------------------------------------------------------- upstream


def request_url(api_base: str, model_id: str, stream: bool) -> str:
    """The Chat Completions endpoint under the provider's API base."""
    return api_base + "/chat/completions"




def encode_request(req: Request, model_id: str) -> dict:
    """Unified Request -> Chat Completions body."""
    messages = [{"role": "system", "content": "\n\n".join(p.text for p in req.system)}] if req.system else []
    for msg in req.messages:
        messages += _encode_message(msg)
    body = {"model": model_id, "messages": messages}
    if req.tools:
        body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                          "parameters": t.parameters or {"type": "object", "properties": {}}}}
                         for t in req.tools]
    tool_options(body, req, lambda name: {"type": "function", "function": {"name": name}})
    set_options(body, req, _OPTIONS)
    if req.response_format:
        body["response_format"] = _encode_format(req.response_format)
    if req.reasoning:
        body["reasoning_effort"] = req.reasoning.as_effort()
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def decode_response(body: dict) -> Response:
    """chat.completion -> unified Response."""
    choice = (body.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    parts = []
    if msg.get("reasoning_content"):
        text = msg["reasoning_content"]
        parts.append(Part("reasoning", text=text, signature=proof(NAME, text=text)))
    if msg.get("content"):
        parts.append(Part("text", text=msg["content"]))
    if msg.get("refusal"):
        parts.append(Part("text", text=msg["refusal"]))
    parts += [_tool_call(call) for call in msg.get("tool_calls") or []]
    return Response(id=body.get("id", ""), model=body.get("model", ""), parts=parts,
                    finish_reason=_FINISH.get(choice.get("finish_reason"), "stop"), usage=usage_of(body))


class StreamDecoder:
    """Chat Completions SSE events -> unified stream events."""

    def __init__(self):
        self.started = False
        self.calls = set()  # chat tool indices already announced
        self.reasoning = ""  # reasoning_content so far: it is its own proof, sent once it is whole

    def feed(self, event: str, data: str) -> list:
        """One upstream chunk as unified events; an in-band error raises ProtocolError (502)."""
        if data == "[DONE]":
            return []
        chunk = json.loads(data)
        if chunk.get("error"):
            raise ProtocolError((chunk["error"] or {}).get("message", "upstream stream error"), 502)
        out = []
        if not self.started:
            self.started = True
            out.append(Event("start", id=chunk.get("id", ""), model=chunk.get("model", "")))
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                self.reasoning += delta["reasoning_content"]
                out.append(Event("reasoning", text=delta["reasoning_content"]))
            elif self.reasoning and (delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason")):
                out.append(Event("reasoning", signature=proof(NAME, text=self.reasoning)))
                self.reasoning = ""
            if delta.get("content"):
                out.append(Event("text", text=delta["content"]))
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                fn = call.get("function") or {}
                if index not in self.calls:
                    self.calls.add(index)
                    out.append(Event("tool_call", index=index, id=call.get("id") or f"call_{secrets.token_hex(8)}",
                                     name=fn.get("name", "")))
                if fn.get("arguments"):
                    out.append(Event("tool_args", index=index, text=fn["arguments"]))
            if choice.get("finish_reason"):
                reason = finish_reason(_FINISH.get(choice["finish_reason"]), bool(self.calls))
                out.append(Event("finish", reason=reason))
        if chunk.get("usage"):
            out.append(Event("usage", usage=usage_of(chunk)))
        return out


def tool_options(body: dict, req: Request, named) -> None:
    """tool_choice (a forced tool as named(name) makes it) and parallel_tool_calls, as both OpenAI
    APIs take them: only with tools, since OpenAI rejects a tool_choice without any."""
    if not req.tools:
        return
    if req.tool_choice:
        body["tool_choice"] = named(req.tool_choice.name) if req.tool_choice.name else req.tool_choice.mode
    set_given(body, "parallel_tool_calls", req.parallel_tool_calls)


def json_schema_format(spec: dict) -> ResponseFormat:
    """A JSON-schema output format from OpenAI's {name, schema, strict} (both APIs use it)."""
    return ResponseFormat("json_schema", spec.get("name") or "response", spec.get("schema") or {}, spec.get("strict"))


def json_schema_spec(fmt: ResponseFormat) -> dict:
    """A JSON-schema output format as OpenAI's {name, schema, strict} (strict only when known)."""
    spec = {"name": fmt.name or "response", "schema": fmt.schema or {}}
    set_given(spec, "strict", fmt.strict)
    return spec


def encode_usage(u: Usage) -> dict:
    """Unified Usage -> OpenAI usage object with cached and reasoning details."""
    return {"prompt_tokens": u.input, "completion_tokens": u.output, "total_tokens": u.input + u.output,
            "prompt_tokens_details": {"cached_tokens": u.cache_read},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning}}


# ---------------------------------------------------------------- helpers

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
                403: "permission_error", 404: "not_found_error", 413: "invalid_request_error",
                429: "rate_limit_error", 502: "api_error", 503: "api_error", 504: "timeout_error"}
_ERROR_CODES = {401: "invalid_api_key", 402: "budget_exceeded", 403: "forbidden",
                413: "request_too_large", 429: "rate_limit_exceeded"}
_USAGE_OBJECT = re.compile(r'"usage"\s*:\s*\{')
_OPTIONS = {"max_completion_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "stop": "stop",
            "user": "user"}  # wire name -> Request field
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
           "content_filter": "content_filter"}


def _require(body: dict, key: str, kind: type):
    value = body.get(key)
    if not isinstance(value, kind) or (kind is str and not value):
        what = "a non-empty string" if kind is str else "an array"
        raise ProtocolError(f"'{key}' is required and must be {what}")
    return value


def _content_parts(content, i: int) -> list:
    """Message content (string or array of parts) -> unified Parts."""
    parts = []
    for item in content_items(content, f"messages[{i}].content", "an array"):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind in ("text", "input_text", "output_text", "refusal"):
            parts.append(Part("text", text=item.get("text") or item.get("refusal") or ""))
        elif kind == "image_url":
            parts.append(media_part((item.get("image_url") or {}).get("url", "")))
        elif kind == "file" and (item.get("file") or {}).get("file_data"):
            parts.append(_file_part(item["file"]))
        elif kind == "file":
            raise ProtocolError(f"messages[{i}].content: a file by file_id needs files stored at OpenAI; "
                                "send its file_data")
        else:
            raise ProtocolError(f"messages[{i}].content: unsupported part type {kind!r}")
    return parts


def _file_part(file: dict) -> Part:
    """A `file` content part's data: a data: URL, or bare base64 typed by the file name (else a PDF)."""
    data = file["file_data"]
    if isinstance(data, str) and data.startswith("data:"):
        return media_part(data, "application/pdf", file=True)
    return media(type_of(str(file.get("filename") or ""), "application/pdf"), data=data, file=True)


def _tool_call(call: dict) -> Part:
    """One entry of an assistant message's tool_calls as a unified tool_call part."""
    fn = call.get("function") or {}
    return Part("tool_call", id=call.get("id", ""), name=fn.get("name", ""), arguments=fn.get("arguments") or "{}")


def _encode_message(msg: Message) -> list:
    """One unified message -> one or more chat messages."""
    if msg.role == "system":
        return [{"role": "system", "content": "\n\n".join(p.text for p in msg.parts if p.kind == "text")}]
    if msg.role == "tool":
        return [{"role": "tool", "tool_call_id": p.id,
                 "content": _tool_text(p)} for p in msg.parts if p.kind == "tool_result"]
    if msg.role == "assistant":
        out = {"role": "assistant", "content": "".join(p.text for p in msg.parts if p.kind == "text") or None}
        calls = [{"id": p.id, "type": "function", "function": {"name": p.name, "arguments": p.arguments or "{}"}}
                 for p in msg.parts if p.kind == "tool_call"]
        if calls:
            out["tool_calls"] = calls
        # DeepSeek/Kimi-style providers want their own reasoning back on tool-call turns.
        reasoning = "".join(native["text"] for p in msg.parts if p.kind == "reasoning"
                            for native in [native_proof(p.signature, NAME)] if native)
        if reasoning:
            out["reasoning_content"] = reasoning
        return [out]
    results = [p for p in msg.parts if p.kind == "tool_result"]
    rest = [p for p in msg.parts if p.kind != "tool_result"]
    out = [{"role": "tool", "tool_call_id": p.id, "content": _tool_text(p)} for p in results]
    if rest:
        if all(p.kind == "text" for p in rest):
            out.append({"role": "user", "content": "".join(p.text for p in rest) if len(rest) == 1 else
                        [{"type": "text", "text": p.text} for p in rest]})
        else:
            out.append({"role": "user", "content": [_encode_part(p) for p in rest]})
    return out


def _encode_part(p: Part) -> dict:
    if p.kind == "file":  # Chat takes files as data only
        if p.url:
            raise ProtocolError(f"a file by URL ({p.url[:80]}) cannot go to a Chat Completions provider; "
                                "send the file's data instead")
        return {"type": "file", "file": {"filename": "document." + extension_of(p.media_type),
                                         "file_data": data_url(p)}}
    if p.kind == "image":
        return {"type": "image_url", "image_url": {"url": data_url(p)}}
    return {"type": "text", "text": p.text}


def _tool_text(p: Part) -> str:
    """Chat tool messages carry text only; an error result is marked so the model knows."""
    text = "\n".join(c.text for c in p.content if c.kind == "text")
    return f"Error: {text}" if p.is_error and not text.startswith("Error") else text


def _decode_format(fmt):
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_schema":
        return json_schema_format(fmt.get("json_schema") or {})
    return ResponseFormat("json_object")


def _encode_format(fmt: ResponseFormat) -> dict:
    if fmt.kind == "json_schema":
        return {"type": "json_schema", "json_schema": json_schema_spec(fmt)}
    return {"type": "json_object"}


def _finish_out(reason) -> str:
    """A unified finish reason as Chat's (an error has no Chat reason of its own)."""
    return reason if reason in ("length", "tool_calls", "content_filter") else "stop"


def _chat_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("chatcmpl") else "chatcmpl-" + secrets.token_hex(12)


PROTOCOL = Protocol(
    name=NAME, title="OpenAI-compatible (chat completions)", auth="bearer", framing=sse,
    routes=(Route("POST", "/v1/chat/completions", "generate"), Route("GET", "/v1/models", "models")),
    model_of=model_of, wants_stream=wants_stream, decode_request=decode_request,
    encode_response=encode_response, StreamEncoder=StreamEncoder, stream_error=stream_error,
    error_body=error_body, usage_of=usage_of, stream_usage=stream_usage, is_final=is_final,
    passthrough_body=passthrough_body, drop_sealed=drop_sealed, relay_frame=relay_frame,
    model_list=model_list,
    request_url=request_url, encode_request=encode_request, decode_response=decode_response,
    StreamDecoder=StreamDecoder, error_message=error_message,
    models_path="/models", model_field=MODEL_FIELD,
    text_fields={"request": ("messages",), "reply": ("choices",), "stream": ("choices",)},
    tool_call_marks=(b'"tool_calls"', b'"function_call"'),  # once per assistant turn with calls
)
