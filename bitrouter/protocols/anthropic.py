"""Anthropic Messages (`POST /v1/messages`), as served to clients and called upstream."""

import base64
import functools
import json
import re
import secrets

from bitrouter import registry
from bitrouter.protocols import (MEDIA, SEAL_PREFIX, Event, Message, Part, Protocol, ProtocolError, Reasoning,
                                 Request, Response, ResponseFormat, Route, Tool, ToolChoice, Usage, add_system,
                                 arguments_object, content_items, finish_reason, media, native_proof, proof,
                                 reply_model, set_given, sse)
from bitrouter.protocols import error_message  # the upstream error reader, shared: {"error": {...}}

NAME = "anthropic"
MODEL_FIELD = "model"  # where a reply names its model: the client's name is put back
DEFAULT_MAX_TOKENS = 4096  # when neither the client nor the catalog says how long an answer may be

# ---------------------------------------------------------------- inbound


def model_of(body: dict, path_model: str | None = None) -> str:
    """The requested model name; a missing one (or missing messages) is a 400."""
    if not isinstance(body.get("messages"), list):
        raise ProtocolError("messages: Field required (an array of messages)")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ProtocolError("model: Field required (a non-empty string)")
    return body["model"]


def wants_stream(body: dict) -> bool:
    """Whether the client asked for an SSE stream."""
    return bool(body.get("stream"))


def decode_request(body: dict) -> Request:
    """Messages request -> unified Request."""
    req = Request(model=body["model"], messages=[], stream=bool(body.get("stream")))
    req.system = _system_parts(body.get("system"))
    names = {}  # tool_use id -> tool name, so that results can carry the name (Gemini needs it)
    for i, msg in enumerate(body["messages"]):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant", "system"):
            raise ProtocolError(f"messages[{i}]: an object with role 'user', 'assistant' or 'system' is required")
        if msg["role"] == "system":  # Claude Code's mid-conversation system messages keep their place
            add_system(req, _system_parts(msg.get("content")))
            continue
        parts = _blocks(msg.get("content"), f"messages[{i}].content", names)
        if msg["role"] == "assistant":
            req.messages.append(Message("assistant", parts))
            continue
        results = [p for p in parts if p.kind == "tool_result"]
        rest = [p for p in parts if p.kind != "tool_result"]
        if results:
            req.messages.append(Message("tool", results))
        if rest or not results:
            req.messages.append(Message("user", rest))
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not tool.get("name"):
            raise ProtocolError(f"tools[{i}]: a tool needs a name")
        if tool.get("type") in (None, "custom"):
            req.tools.append(Tool(tool["name"], tool.get("description") or "", tool.get("input_schema") or {}))
        else:  # server tools (web search, bash, code execution...) run inside Anthropic
            req.dropped.append(tool["type"])
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool":
        req.tool_choice = ToolChoice("required", choice.get("name", ""))
    elif choice.get("type") in _CHOICE_IN:
        req.tool_choice = ToolChoice(_CHOICE_IN[choice["type"]])
    if choice.get("disable_parallel_tool_use"):
        req.parallel_tool_calls = False
    req.max_tokens = body.get("max_tokens")
    req.temperature = body.get("temperature")
    req.top_p = body.get("top_p")
    req.top_k = body.get("top_k")
    req.stop = list(body.get("stop_sequences") or [])
    config = body.get("output_config") or {}
    fmt = config.get("format") or body.get("output_format")  # GA name, then the beta one
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        req.response_format = ResponseFormat("json_schema", schema=fmt.get("schema") or {}, strict=True)
    req.reasoning = _decode_thinking(body.get("thinking") or {}, config.get("effort"))
    req.user = (body.get("metadata") or {}).get("user_id")
    req.cache_key = _session_of(req.user)
    return req


def encode_response(resp: Response, model: str, request: Request | None = None) -> dict:
    """Unified Response -> Messages `message` object."""
    content = [block for block in map(_response_block, resp.parts) if block]
    return {"id": _message_id(resp.id), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": _STOP_OUT.get(resp.finish_reason, "end_turn"),
            "stop_sequence": None, "usage": encode_usage(resp.usage)}


class StreamEncoder:
    """Unified stream events -> Messages SSE: message_start, indexed content blocks, message_stop."""

    def __init__(self, model: str, request: Request):
        self.model = model
        self.id = ""
        self.started = False
        self.block = None  # kind of the open content block: text | thinking | a unified tool index
        self.index = -1  # index of the open (last opened) block
        self.tools = {}  # unified tool index -> content block index
        self.finish_reason = None
        self.usage = None

    def event(self, ev: Event) -> bytes:
        """One unified event as Messages SSE frames, opening and closing content blocks as needed."""
        kind = ev.kind
        if kind == "text":
            out = self._open("text", {"type": "text", "text": ""}) if self.block != "text" else b""
            return out + _delta(self.index, {"type": "text_delta", "text": ev.text})
        if kind == "reasoning":
            out = b"" if self.block == "thinking" else \
                self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            if ev.text:
                out += _delta(self.index, {"type": "thinking_delta", "thinking": ev.text})
            if ev.signature:
                out += _delta(self.index, {"type": "signature_delta", "signature": ev.signature})
            return out
        if kind == "tool_call":
            out = self._open(("tool", ev.index), {"type": "tool_use", "id": _tool_id(ev.id) or _new_tool_id(),
                                                  "name": ev.name, "input": {}})
            self.tools[ev.index] = self.index
            return out
        if kind == "tool_args":
            index = self.tools.get(ev.index)
            if index is None or not ev.text:
                return b""
            return _delta(index, {"type": "input_json_delta", "partial_json": ev.text})
        if kind == "start":  # the model keeps the client's name: Claude Code drops thinking otherwise
            self.id = ev.id
            return self._start()
        if kind == "finish":
            self.finish_reason = ev.reason
        elif kind == "usage":
            self.usage = ev.usage
        return b""

    def finish_stream(self) -> bytes:
        """Close the open block, then message_delta (stop reason, usage) and message_stop."""
        out = self._start() + self._close()
        reason = _STOP_OUT.get(self.finish_reason, "end_turn")
        out += sse.frame({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None},
                          "usage": encode_usage(self.usage or Usage())}, "message_delta")
        return out + sse.frame({"type": "message_stop"}, "message_stop")

    def _start(self) -> bytes:
        """The single message_start, sent before anything else."""
        if self.started:
            return b""
        self.started = True
        message = {"id": _message_id(self.id), "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        return sse.frame({"type": "message_start", "message": message}, "message_start")

    def _open(self, block, content_block: dict) -> bytes:
        out = self._start() + self._close()
        self.block, self.index = block, self.index + 1
        return out + sse.frame({"type": "content_block_start", "index": self.index,
                                "content_block": content_block}, "content_block_start")

    def _close(self) -> bytes:
        if self.block is None:
            return b""
        self.block = None
        return sse.frame({"type": "content_block_stop", "index": self.index}, "content_block_stop")

    def error(self, status: int, message: str) -> bytes:
        """End a broken stream with the protocol's in-band error (no stream state to close)."""
        return stream_error(status, message)


def stream_error(status: int, message: str) -> bytes:
    """The `event: error` that ends a broken stream."""
    return sse.frame(error_body(status, message), "error")


def error_body(status: int, message: str) -> dict:
    """Anthropic's error object."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}


def count_request(body: dict) -> Request:
    """The request a `/v1/messages/count_tokens` body describes."""
    return decode_request(body)


def count_reply(tokens: int) -> dict:
    """The `/v1/messages/count_tokens` answer."""
    return {"input_tokens": tokens}


def usage_of(body: dict) -> Usage:
    """Usage from a `message` body."""
    return _usage(body.get("usage") or {})


def stream_usage(event: str, data: str) -> Usage | None:
    """Usage in a relayed event: message_start has the input side, message_delta the output side."""
    if '"usage"' not in data:
        return None
    body = json.loads(data)
    if body.get("type") == "message_start":
        return usage_of(body.get("message") or {})
    return _usage(body["usage"]) if body.get("type") == "message_delta" else None


def is_final(event: str, data: str) -> bool:
    """Whether a relayed SSE event is the one that properly ends the stream."""
    return event == "message_stop"


def relay_frame(event: str, raw: bytes, model: str) -> bytes:
    """A passed-through stream frame as the client gets it: message_start names the client's model."""
    return reply_model(raw, MODEL_FIELD, model) if event == "message_start" else raw


def drop_sealed(body: dict) -> dict:
    """The body without thinking blocks sealed for other providers (and without thinking, if
    a tool-use turn lost its thinking that way: Anthropic would refuse the request)."""
    messages, lost = [], False
    for msg in body["messages"]:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):
            kept = [b for b in content if not _sealed_block(b)]
            lost = lost or (len(kept) < len(content) and any(_block_type(b) == "tool_use" for b in kept))
            msg = dict(msg, content=kept)
        messages.append(msg)
    out = dict(body, messages=messages)
    if lost:
        out.pop("thinking", None)
    return out


def passthrough_body(body: dict, model_id: str, stream: bool) -> dict:
    """The client's own body for an Anthropic upstream: `model` changes, a missing max_tokens is filled."""
    out = dict(body, model=model_id)
    if not body.get("max_tokens"):
        out["max_tokens"] = default_max_tokens(model_id)
    return out


# ---------------------------------------------------------------- upstream


def request_url(api_base: str, model_id: str, stream: bool) -> str:
    """The Messages endpoint, whether or not the API base already ends in /v1."""
    return api_base + ("/messages" if api_base.endswith("/v1") else "/v1/messages")


def encode_request(req: Request, model_id: str) -> dict:
    """Unified Request -> Messages body."""
    max_tokens = req.max_tokens or default_max_tokens(model_id)
    body = {"model": model_id, "max_tokens": max_tokens, "messages": _encode_messages(req.messages)}
    if req.system:
        body["system"] = [{"type": "text", "text": p.text} for p in req.system if p.text]
    forced = req.tool_choice is not None and req.tool_choice.forced
    # Thinking on requires every assistant tool_use turn to open with its signed thinking;
    # a conversation whose proofs were dropped (another provider made them) goes without.
    budget = None if forced or not _thinking_kept(body["messages"]) else _thinking_budget(req.reasoning, max_tokens)
    if budget:
        # Anthropic refuses temperature, top_k and a narrow top_p while thinking.
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    else:
        set_given(body, "temperature", None if req.temperature is None else min(max(req.temperature, 0.0), 1.0))
        set_given(body, "top_k", req.top_k)
        set_given(body, "top_p", req.top_p)
    if req.stop:
        body["stop_sequences"] = req.stop
    if req.tools:
        body["tools"] = [{"name": t.name, "description": t.description,
                          "input_schema": t.parameters or {"type": "object", "properties": {}}}
                         for t in req.tools]
        given = req.tool_choice or ToolChoice()
        choice = {"type": "tool", "name": given.name} if given.name else {"type": _CHOICE_OUT[given.mode]}
        if req.parallel_tool_calls is False and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        if req.tool_choice or len(choice) > 1:
            body["tool_choice"] = choice
    if req.response_format and req.response_format.kind == "json_schema":
        body["output_config"] = {"format": {"type": "json_schema", "schema": req.response_format.schema or {}}}
    if req.user:
        body["metadata"] = {"user_id": req.user[:256]}
    if req.stream:
        body["stream"] = True
    return body


def count_url(api_base: str, model_id: str) -> str:
    """Anthropic's own token counter for a Messages request."""
    return request_url(api_base, model_id, False) + "/count_tokens"


def count_body(req: Request, model_id: str) -> dict:
    """A count_tokens body: the Messages request without what only generation takes."""
    body = encode_request(req, model_id)
    return {key: value for key, value in body.items() if key in _COUNTED_FIELDS}


def counted(data: dict) -> int:
    """The token count in a count_tokens answer."""
    return int(data["input_tokens"])


def decode_response(body: dict) -> Response:
    """Messages `message` -> unified Response."""
    parts = []
    for block in body.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            parts.append(Part("text", text=block.get("text") or ""))
        elif kind in ("thinking", "redacted_thinking"):
            parts.append(Part("reasoning", text=block.get("thinking") or "", signature=_proof(block)))
        elif kind == "tool_use":
            parts.append(Part("tool_call", id=block.get("id", ""), name=block.get("name", ""),
                              arguments=json.dumps(block.get("input") or {})))
    return Response(id=body.get("id", ""), model=body.get("model", ""), parts=parts,
                    finish_reason=_FINISH_IN.get(body.get("stop_reason"), "stop"), usage=usage_of(body))


class StreamDecoder:
    """Messages SSE events -> unified stream events."""

    def __init__(self):
        self.tools = set()  # content block indices that are tool_use blocks
        self.thinking = {}  # thinking block index -> its text so far (the signature covers it)
        self.usage = Usage()

    def feed(self, event: str, data: str) -> list:
        """One upstream event as unified events; an `error` event raises ProtocolError (502)."""
        if not data:
            return []
        ev = json.loads(data)
        kind = ev.get("type") or event
        if kind == "content_block_delta":
            delta = ev.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return [Event("text", text=delta.get("text", ""))]
            if dtype == "input_json_delta" and ev.get("index") in self.tools and delta.get("partial_json"):
                return [Event("tool_args", index=ev["index"], text=delta["partial_json"])]
            if dtype == "thinking_delta":
                text = delta.get("thinking", "")
                self.thinking[ev.get("index")] = self.thinking.get(ev.get("index"), "") + text
                return [Event("reasoning", text=text)]
            if dtype == "signature_delta":
                block = {"type": "thinking", "thinking": self.thinking.pop(ev.get("index"), ""),
                         "signature": delta.get("signature", "")}
                return [Event("reasoning", signature=_proof(block))]
            return []  # citation deltas have no unified form
        if kind == "content_block_start":
            return self._block(ev.get("index", 0), ev.get("content_block") or {})
        if kind == "message_start":
            message = ev.get("message") or {}
            self.usage = usage_of(message)
            return [Event("start", id=message.get("id", ""), model=message.get("model", ""))]
        if kind == "message_delta":
            self.usage = _merge_usage(self.usage, ev.get("usage") or {})
            reason = (ev.get("delta") or {}).get("stop_reason")
            return [Event("finish", reason=finish_reason(_FINISH_IN.get(reason), bool(self.tools))),
                    Event("usage", usage=self.usage)]
        if kind == "error":
            raise ProtocolError((ev.get("error") or {}).get("message") or "upstream stream error", 502)
        return []

    def _block(self, index: int, block: dict) -> list:
        kind = block.get("type")
        if kind == "tool_use":
            self.tools.add(index)
            out = [Event("tool_call", index=index, id=block.get("id", ""), name=block.get("name", ""))]
            if block.get("input"):
                out.append(Event("tool_args", index=index, text=json.dumps(block["input"])))
            return out
        if kind == "text" and block.get("text"):
            return [Event("text", text=block["text"])]
        if kind == "thinking" and block.get("thinking"):
            self.thinking[index] = block["thinking"]
            return [Event("reasoning", text=block["thinking"])]
        if kind == "redacted_thinking":
            return [Event("reasoning", signature=_proof(block))]
        return []


def encode_usage(u: Usage) -> dict:
    """Unified Usage -> Anthropic usage: input_tokens excludes the cached tokens, counted apart."""
    out = {"input_tokens": max(0, u.input - u.cache_read - u.cache_write), "output_tokens": u.output,
           "cache_read_input_tokens": u.cache_read, "cache_creation_input_tokens": u.cache_write}
    if u.reasoning:
        out["output_tokens_details"] = {"thinking_tokens": u.reasoning}
    return out


def default_max_tokens(model_id: str) -> int:
    """max_tokens for a request that gave none: the catalog's max_output for the model, else 4096."""
    return _catalog_max_output().get(model_id) or DEFAULT_MAX_TOKENS


# ---------------------------------------------------------------- helpers

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
                413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
                529: "overloaded_error", 504: "timeout_error"}
_FINISH_IN = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
              "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
_STOP_OUT = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
_CHOICE_IN = {"auto": "auto", "any": "required", "none": "none"}
_CHOICE_OUT = {"auto": "auto", "required": "any", "none": "none"}
_EFFORT_IN = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_MIN_BUDGET = 1024
_COUNTED_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
# Blocks that only Anthropic itself can use (server tools and their results): left out of translations.
_ANTHROPIC_ONLY = {"server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
                   "code_execution_tool_result", "bash_code_execution_tool_result", "tool_search_tool_result",
                   "text_editor_code_execution_tool_result", "container_upload", "mcp_tool_use",
                   "mcp_tool_result"}
_BAD_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def _delta(index: int, delta: dict) -> bytes:
    """A content_block_delta frame for the block at index."""
    return sse.frame({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta")


def _system_parts(system) -> list:
    """`system` as a string or an array of text blocks (cache_control hints have no unified form)."""
    return [Part("text", text=b["text"]) for b in content_items(system, "system", "an array of text blocks")
            if isinstance(b, dict) and b.get("text")]


def _blocks(content, where: str, names: dict) -> list:
    """Message content (string or array of blocks) -> unified Parts."""
    parts = []
    for j, block in enumerate(content_items(content, where, "an array of content blocks")):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if block.get("text"):
                parts.append(Part("text", text=block["text"]))
        elif kind in ("image", "document"):
            parts.append(_source(block.get("source") or {}, f"{where}[{j}]", kind))
        elif kind == "tool_use":
            names[block.get("id", "")] = block.get("name", "")
            parts.append(Part("tool_call", id=block.get("id", ""), name=block.get("name", ""),
                              arguments=json.dumps(block.get("input") or {})))
        elif kind == "tool_result":
            call_id = block.get("tool_use_id", "")
            parts.append(Part("tool_result", id=call_id, name=names.get(call_id, ""),
                              content=_blocks(block.get("content"), f"{where}[{j}].content", names),
                              is_error=bool(block.get("is_error"))))
        elif kind == "thinking":  # the signature is the client's carrier for a sealed proof
            parts.append(Part("reasoning", text=block.get("thinking") or "", signature=block.get("signature") or ""))
        elif kind == "redacted_thinking":
            parts.append(Part("reasoning", signature=block.get("data") or ""))
        elif kind not in _ANTHROPIC_ONLY:
            raise ProtocolError(f"{where}[{j}]: unsupported content block type {kind!r}")
    return parts


def _source(source: dict, where: str, kind: str) -> Part:
    """An image or document source: base64 data, a URL, or (documents) plain text."""
    stype = source.get("type")
    document = kind == "document"
    if stype == "base64":
        media_type = source.get("media_type") or ("application/pdf" if document else "image/png")
        return media(media_type, data=source.get("data") or "", file=document)
    if stype == "url":  # URL documents are PDFs
        return media("application/pdf" if document else "", url=source.get("url") or "", file=document)
    if stype == "text" and kind == "document":
        return Part("text", text=source.get("data") or "")
    raise ProtocolError(f"{where}.source: type {stype!r} can only be sent to an Anthropic upstream")


def _decode_thinking(thinking: dict, effort) -> Reasoning | None:
    kind = thinking.get("type")
    if kind == "enabled" and thinking.get("budget_tokens"):
        return Reasoning(budget_tokens=thinking["budget_tokens"])
    if kind == "adaptive" or (effort and kind != "disabled"):
        return Reasoning(effort=_EFFORT_IN.get(effort, "medium"))
    return None


def _thinking_budget(reasoning: Reasoning | None, max_tokens: int) -> int | None:
    """A budget Anthropic accepts: at least 1024 and below max_tokens (else no thinking)."""
    if not reasoning:
        return None
    budget = reasoning.as_budget()
    if not budget or max_tokens <= _MIN_BUDGET:
        return None
    return min(max(budget, _MIN_BUDGET), max_tokens - 1)


def _encode_messages(messages: list) -> list:
    """Unified messages -> alternating user/assistant turns, tool results first in their user turn.

    A mid-conversation system message becomes text of the user turn at its place (the
    Messages API takes system text only up front, unless the client's beta says otherwise).
    """
    out = []
    for msg in messages:
        role = "assistant" if msg.role == "assistant" else "user"
        blocks = [block for block in map(_request_block, msg.parts) if block]
        if msg.role == "system":
            blocks = [{"type": "text", "text": "System: " + b["text"]} for b in blocks]
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"] += blocks
        else:
            out.append({"role": role, "content": blocks})
    for turn in out:
        if turn["role"] == "user":
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")  # stable: order kept otherwise
    return out


def _request_block(p: Part) -> dict | None:
    if p.kind == "text":
        return {"type": "text", "text": p.text} if p.text else None
    if p.kind in MEDIA:
        return _media_block(p)
    if p.kind == "tool_call":
        return {"type": "tool_use", "id": _tool_id(p.id), "name": p.name, "input": arguments_object(p.arguments)}
    if p.kind == "tool_result":
        block = {"type": "tool_result", "tool_use_id": _tool_id(p.id)}
        content = [b for b in map(_request_block, p.content) if b]
        if content:
            block["content"] = content
        if p.is_error:
            block["is_error"] = True
        return block
    if p.kind == "reasoning":  # only Anthropic's own proofs; unsigned thinking is refused
        native = native_proof(p.signature, NAME)
        return native["block"] if native else None
    return None


def _media_block(p: Part) -> dict:
    """An image, or a file as a document: PDFs (data or URL) and plain text are what Anthropic takes."""
    kind = "document" if p.kind == "file" else "image"
    if kind == "document" and p.media_type == "text/plain" and p.data:
        return {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": _text_of(p)}}
    if kind == "document" and p.media_type not in ("application/pdf", ""):
        raise ProtocolError(f"Anthropic models cannot take {p.media_type} files (only PDFs and plain text)")
    if p.url:
        return {"type": kind, "source": {"type": "url", "url": p.url}}
    default_type = "application/pdf" if kind == "document" else "image/png"
    return {"type": kind, "source": {"type": "base64", "media_type": p.media_type or default_type, "data": p.data}}


def _text_of(p: Part) -> str:
    """A plain-text file's base64 data as its text (Anthropic takes text documents as text)."""
    try:
        return base64.b64decode(p.data, validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise ProtocolError("a text/plain file must be base64 of UTF-8 text") from None


def _response_block(p: Part) -> dict | None:
    if p.kind == "text":
        return {"type": "text", "text": p.text}
    if p.kind == "reasoning":
        return {"type": "thinking", "thinking": p.text, "signature": p.signature}
    if p.kind == "tool_call":
        return {"type": "tool_use", "id": _tool_id(p.id) or _new_tool_id(), "name": p.name,
                "input": arguments_object(p.arguments)}
    return None


def _proof(block: dict) -> str:
    """A thinking or redacted_thinking block as the native proof that replays it."""
    keep = ("type", "thinking", "signature") if block.get("type") == "thinking" else ("type", "data")
    return proof(NAME, block={key: block.get(key) or "" for key in keep})


def _block_type(block) -> str | None:
    return block.get("type") if isinstance(block, dict) else None


def _sealed_block(block) -> bool:
    """A thinking or redacted_thinking block carrying a proof BitRouter sealed."""
    kind = _block_type(block)
    value = block.get("signature") if kind == "thinking" else block.get("data") if kind == "redacted_thinking" else None
    return isinstance(value, str) and value.startswith(SEAL_PREFIX)


def _thinking_kept(messages: list) -> bool:
    """Whether every assistant turn with tool_use still opens with a thinking block."""
    return all(turn["content"][0]["type"] in ("thinking", "redacted_thinking") for turn in messages
               if turn["role"] == "assistant" and any(b["type"] == "tool_use" for b in turn["content"]))


def _session_of(user_id) -> str | None:
    """Claude Code's metadata.user_id is a JSON object as a string; its session id keys caches."""
    if not isinstance(user_id, str) or not user_id.startswith("{"):
        return None
    try:
        session = json.loads(user_id).get("session_id")
    except (ValueError, AttributeError):
        return None
    return session if isinstance(session, str) else None


def _tool_id(call_id: str) -> str:
    """Anthropic ids allow [a-zA-Z0-9_-] only; other providers' ids are mapped the same way each time."""
    return _BAD_ID_CHARS.sub("_", call_id)


def _new_tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def _message_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("msg_") else "msg_" + secrets.token_hex(12)


def _usage(u: dict) -> Usage:
    read = u.get("cache_read_input_tokens") or 0
    write = u.get("cache_creation_input_tokens") or 0
    return Usage(input=(u.get("input_tokens") or 0) + read + write, output=u.get("output_tokens") or 0,
                 cache_read=read, cache_write=write,
                 reasoning=(u.get("output_tokens_details") or {}).get("thinking_tokens") or 0)


def _merge_usage(prior: Usage, u: dict) -> Usage:
    """message_delta counts are cumulative, but only newer API versions repeat the input side."""
    merged = _usage(u)
    if u.get("input_tokens") is None:
        merged.input, merged.cache_read, merged.cache_write = prior.input, prior.cache_read, prior.cache_write
    if not u.get("output_tokens_details"):
        merged.reasoning = prior.reasoning
    return merged


@functools.lru_cache(maxsize=1)
def _catalog_max_output() -> dict:
    """model_id -> max_output from the registry, Anthropic-protocol providers first."""
    table = {}
    for provider in sorted(registry.providers().values(), key=lambda p: p["api_protocol"] != "anthropic"):
        for model_id, info in provider.get("models", {}).items():
            if info.get("max_output"):
                table.setdefault(model_id, info["max_output"])
    return table


PROTOCOL = Protocol(
    name=NAME, title="Anthropic-compatible (messages)", auth="x-api-key", framing=sse,
    routes=(Route("POST", "/v1/messages", "generate"), Route("POST", "/v1/messages/count_tokens", "count")),
    model_of=model_of, wants_stream=wants_stream, decode_request=decode_request,
    encode_response=encode_response, StreamEncoder=StreamEncoder, stream_error=stream_error,
    error_body=error_body, usage_of=usage_of, stream_usage=stream_usage, is_final=is_final,
    passthrough_body=passthrough_body, drop_sealed=drop_sealed, relay_frame=relay_frame,
    count_request=count_request, count_reply=count_reply,
    request_url=request_url, encode_request=encode_request, decode_response=decode_response,
    StreamDecoder=StreamDecoder, error_message=error_message,
    count_url=count_url, count_body=count_body, counted=counted,
    models_path="/v1/models", model_field=MODEL_FIELD,
    keepalive=sse.frame({"type": "ping"}, "ping"),
    text_fields={"request": ("system", "messages"), "reply": ("content",), "stream": ("delta", "content_block")},
    tool_call_marks=(b'"tool_use"',),  # once per tool_use block (at least)
    fixed_headers={"anthropic-version": "2023-06-01"},
    forward_headers=("anthropic-version", "anthropic-beta"),  # Claude Code's betas go along
)
