"""OpenAI Responses API (`POST /v1/responses`), as served to clients (Codex) and called upstream.

A Responses conversation is a flat list of items; one assistant turn is several of them
(reasoning, message, function_call...). Decoding merges consecutive assistant-side items
into one unified assistant message and consecutive function_call_output items into one
tool message, so other protocols see ordinary alternating turns.

Server-side state (previous_response_id, conversation, stored prompts, item references,
background mode) cannot be translated by a stateless proxy: such requests get a 400
unless they are passed through to a Responses upstream untouched. OpenAI-hosted tools
(web search, file search...) are left out of a translated request, and named in
Request.dropped; Codex's namespaced and freeform (`custom`) tools travel as plain
functions and come back as the items the client declared.
"""

import hashlib
import json
import secrets
import time

from bitrouter.protocols import (SEAL_PREFIX, Event, Message, Part, Protocol, ProtocolError, Reasoning, Request,
                                 Response, ResponseFormat, Route, Tool, ToolChoice, Usage, add_system, content_items,
                                 data_url, extension_of, finish_reason, media, media_part, native_proof, proof,
                                 reply_model, set_options, sse, type_of)
from bitrouter.protocols import error_message  # the upstream error reader, shared: {"error": {...}}
from bitrouter.protocols import chat

NAME = "responses"
MODEL_FIELD = "model"  # where a reply names its model: the client's name is put back

# Events after which a Responses stream is over, whatever its outcome.
TERMINAL = ("response.completed", "response.incomplete", "response.failed")

# Request fields that need state kept by OpenAI; translation cannot honour them.
STATEFUL = {"previous_response_id": "previous_response_id", "conversation": "conversation",
            "prompt": "a stored prompt", "background": "background mode"}

# ---------------------------------------------------------------- inbound


def model_of(body: dict, path_model: str | None = None) -> str:
    """The requested model name; a missing model or a malformed input is a 400."""
    if "input" in body and not isinstance(body["input"], (str, list)):
        raise ProtocolError("'input' must be a string or an array of items")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ProtocolError("'model' is required and must be a non-empty string")
    return model


def wants_stream(body: dict) -> bool:
    """Whether the client asked for an SSE stream."""
    return bool(body.get("stream"))


def decode_request(body: dict) -> Request:
    """Responses request -> unified Request (only called when translating to another protocol)."""
    for key, what in STATEFUL.items():
        if body.get(key):
            raise ProtocolError(f"{what} ({key!r}) needs state stored at OpenAI, which BitRouter cannot "
                                "translate; route this model to a Responses provider or send the full input")
    req = Request(model=body["model"], messages=[], stream=bool(body.get("stream")))
    instructions = body.get("instructions")
    if instructions:
        if not isinstance(instructions, str):
            raise ProtocolError("'instructions' must be a string")
        req.system.append(Part("text", text=instructions))
    items = body.get("input")
    if items is None:
        raise ProtocolError("'input' is required")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    _decode_items(items, req)
    _decode_tools(body, req)
    req.parallel_tool_calls = body.get("parallel_tool_calls")
    req.max_tokens = body.get("max_output_tokens")
    req.temperature = body.get("temperature")
    req.top_p = body.get("top_p")
    req.response_format = _decode_format((body.get("text") or {}).get("format"))
    effort = (body.get("reasoning") or {}).get("effort")
    if effort:
        req.reasoning = Reasoning(effort=effort)
    req.user = body.get("safety_identifier") or body.get("user")
    req.cache_key = body.get("prompt_cache_key")
    return req


def encode_response(resp: Response, model: str, request: Request | None = None) -> dict:
    """Unified Response -> Responses `response` object."""
    output = []
    for p in resp.parts:
        if p.kind == "text":
            if output and output[-1]["type"] == "message":
                output[-1]["content"][0]["text"] += p.text
            else:
                output.append(_message_item(_new_id("msg"), p.text, "completed"))
        elif p.kind == "reasoning":
            output.append(_reasoning_item(p.id if p.id.startswith("rs_") else _new_id("rs"), p.text, p.signature))
        elif p.kind == "tool_call":
            output.append(_client_call(_call_item(_new_id("fc"), p.id, p.name, p.arguments or "{}", "completed"),
                                       request))
    rid = resp.id if resp.id.startswith("resp_") else _new_id("resp")
    return _response_object(rid, model, int(time.time()), output, resp.finish_reason, resp.usage)


class StreamEncoder:
    """Unified stream events -> Responses SSE events, each with `event:` and a sequence_number.

    Text and reasoning items close when another item starts; function calls of one batch
    stay open together (upstreams may interleave their argument deltas) and close when
    something else starts or the stream ends.
    """

    def __init__(self, model: str, request: Request):
        self.request = request
        self.id = _new_id("resp")
        self.model = model
        self.created = int(time.time())
        self.seq = 0
        self.started = False
        self.output = []  # the output items, updated as deltas arrive
        self.current = None  # output_index of the open message or reasoning item
        self.calls = {}  # unified tool index -> output_index, while open
        self.finish_reason = "stop"
        self.usage = Usage()

    def event(self, ev: Event) -> bytes:
        """One unified event as Responses SSE events, opening and closing output items as needed."""
        if ev.kind == "start":  # the model keeps the name the client asked for
            return self._start()
        out = self._start()
        if ev.kind == "text":
            out += self._open("message")
            item = self.output[self.current]
            item["content"][0]["text"] += ev.text
            return out + self._emit("response.output_text.delta", item_id=item["id"], output_index=self.current,
                                    content_index=0, delta=ev.text, logprobs=[])
        if ev.kind == "reasoning":
            out += self._open("reasoning")
            item = self.output[self.current]
            if ev.signature:  # carried as encrypted_content, so a later turn can hand it back
                item["encrypted_content"] = ev.signature
            if not ev.text:
                return out
            item["summary"][0]["text"] += ev.text
            return out + self._emit("response.reasoning_summary_text.delta", item_id=item["id"],
                                    output_index=self.current, summary_index=0, delta=ev.text)
        if ev.kind == "tool_call":
            return out + self._close_current() + self._add(ev.index, ev.id, ev.name)
        if ev.kind == "tool_args":
            if ev.index not in self.calls:  # arguments for a call never announced: announce it
                out += self._close_current() + self._add(ev.index, "", "")
            index = self.calls[ev.index]
            item = self.output[index]
            item["arguments"] += ev.text
            if _client_call(item, self.request)["type"] != "function_call":
                return out  # a custom tool's input is sent whole, when its item is done
            return out + self._emit("response.function_call_arguments.delta", item_id=item["id"],
                                    output_index=index, delta=ev.text)
        if ev.kind == "finish":
            self.finish_reason = ev.reason or "stop"
        elif ev.kind == "usage" and ev.usage:
            self.usage = ev.usage
        return out

    def finish_stream(self) -> bytes:
        """Close the open items, then the terminal event that matches the finish reason."""
        out = self._start() + self._close_current() + self._close_calls()
        body = _response_object(self.id, self.model, self.created, self.output, self.finish_reason, self.usage)
        return out + self._emit(_TERMINAL_EVENT[body["status"]], response=body)

    def error(self, status: int, message: str) -> bytes:
        """End a broken stream: `response.failed` for Codex, then `error` for the SDKs.

        The openai SDK raises APIError only for an event carrying an `error` object, while
        Codex reads the failure from `response.failed`; both are numbered in sequence.
        """
        fields = _error_fields(status, message)
        body = _response_object(self.id, self.model, self.created, self.output, "error", self.usage)
        body["error"] = {"code": fields["error"]["code"] or "server_error", "message": message}
        return self._start() + self._emit("response.failed", response=body) + self._emit("error", **fields)

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        body = _response_object(self.id, self.model, self.created, [], None, None)
        return self._emit("response.created", response=body) + self._emit("response.in_progress", response=body)

    def _open(self, kind: str) -> bytes:
        """Make sure the open item is a `kind` item (message | reasoning)."""
        if self.current is not None and self.output[self.current]["type"] == kind:
            return b""
        out = self._close_current() + self._close_calls()
        self.current = len(self.output)
        item = _message_item(_new_id("msg"), "", "in_progress") if kind == "message" else \
            _reasoning_item(_new_id("rs"), "", "")
        self.output.append(item)
        parts, part_event, position, _ = _TEXT_ITEMS[kind]
        return out + self._emit("response.output_item.added", output_index=self.current, item={**item, parts: []}) + \
            self._emit(part_event + ".added", item_id=item["id"], output_index=self.current, **{position: 0},
                       part=dict(item[parts][0]))

    def _add(self, unified_index: int, call_id: str, name: str) -> bytes:
        index = len(self.output)
        item = _call_item(_new_id("fc"), call_id or _new_id("call"), name, "", "in_progress")
        self.output.append(item)
        self.calls[unified_index] = index
        return self._emit("response.output_item.added", output_index=index, item=dict(_client_call(item, self.request)))

    def _close_current(self) -> bytes:
        if self.current is None:
            return b""
        index, self.current = self.current, None
        item = self.output[index]
        message = item["type"] == "message"
        if message:
            item["status"] = "completed"
        parts, part_event, position, text_event = _TEXT_ITEMS[item["type"]]
        part = item[parts][0]
        return (self._emit(text_event + ".done", item_id=item["id"], output_index=index, **{position: 0},
                           text=part["text"], **({"logprobs": []} if message else {}))
                + self._emit(part_event + ".done", item_id=item["id"], output_index=index, **{position: 0}, part=part)
                + self._emit("response.output_item.done", output_index=index, item=item))

    def _close_calls(self) -> bytes:
        out = b""
        for index in sorted(self.calls.values()):
            item = self.output[index]
            item["arguments"] = item["arguments"] or "{}"
            item["status"] = "completed"
            client_item = self.output[index] = _client_call(item, self.request)
            if client_item is item:
                out += self._emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                  name=item["name"], arguments=item["arguments"])
            out += self._emit("response.output_item.done", output_index=index, item=client_item)
        self.calls = {}
        return out

    def _emit(self, kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse.frame(data, kind)


def stream_error(status: int, message: str) -> bytes:
    """The in-band `error` event that ends a broken pass-through stream.

    It carries both the documented flat fields and an `error` object: the openai SDK
    raises APIError with the message for the latter. Translated streams end with the
    encoder's own numbered `response.failed` instead (StreamEncoder.error).
    """
    return sse.frame({"type": "error", **_error_fields(status, message)}, "error")


def error_body(status: int, message: str) -> dict:
    """OpenAI's error object (the Responses API shares it with Chat Completions)."""
    return chat.error_body(status, message)


def usage_of(body: dict) -> Usage:
    """Usage from a `response` object (or an event that wraps one)."""
    u = (body.get("response") or body).get("usage") or {}
    details = u.get("input_tokens_details") or {}
    return Usage(input=u.get("input_tokens") or 0, output=u.get("output_tokens") or 0,
                 cache_read=details.get("cached_tokens") or 0,
                 cache_write=details.get("cache_write_tokens") or 0,
                 reasoning=(u.get("output_tokens_details") or {}).get("reasoning_tokens") or 0)


def stream_usage(event: str, data: str) -> Usage | None:
    """Usage carried by one relayed SSE event: only the terminal events have it."""
    if '"usage"' not in data or (event and event not in TERMINAL):
        return None
    body = json.loads(data)
    return usage_of(body) if body.get("type") in TERMINAL else None


def is_final(event: str, data: str) -> bool:
    """Whether a relayed SSE event ends the stream (completed, incomplete or failed)."""
    if event:
        return event in TERMINAL
    return any(f'"{kind}"' in data for kind in TERMINAL) and json.loads(data).get("type") in TERMINAL


def count_request(body: dict) -> Request:
    """The request a `/v1/responses/input_tokens` body describes."""
    return decode_request(body)


def count_reply(tokens: int) -> dict:
    """The `/v1/responses/input_tokens` answer."""
    return {"object": "response.input_tokens", "input_tokens": tokens}


def relay_frame(event: str, raw: bytes, model: str) -> bytes:
    """A passed-through event as the client gets it: the `response` it wraps names the client's model."""
    return reply_model(raw, MODEL_FIELD, model) if event in _WITH_RESPONSE or not event else raw


def drop_sealed(body: dict) -> dict:
    """The body without reasoning items whose encrypted content BitRouter sealed for another provider."""
    items = body.get("input")
    if not isinstance(items, list):
        return body
    return dict(body, input=[i for i in items if not (isinstance(i, dict) and i.get("type") == "reasoning" and
                                                      str(i.get("encrypted_content") or "").startswith(SEAL_PREFIX))])


def passthrough_body(body: dict, model_id: str, stream: bool) -> dict:
    """The client's own body for a Responses upstream: only `model` changes (usage always comes)."""
    return dict(body, model=model_id)


# ---------------------------------------------------------------- upstream


def request_url(api_base: str, model_id: str, stream: bool) -> str:
    """The Responses endpoint under the provider's API base."""
    return api_base + "/responses"


def encode_request(req: Request, model_id: str) -> dict:
    """Unified Request -> Responses body (stateless: store is false, the full input is sent)."""
    items = []
    for msg in req.messages:
        items += _encode_message(msg)
    body = {"model": model_id, "input": items, "store": False}
    if req.system:
        body["instructions"] = "\n\n".join(p.text for p in req.system)
    if req.tools:
        # Responses makes function tools strict by default, which rejects most schemas
        # written for other APIs; the other protocols never asked for strictness.
        body["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                          "parameters": t.parameters or {"type": "object", "properties": {}}, "strict": False}
                         for t in req.tools]
    chat.tool_options(body, req, lambda name: {"type": "function", "name": name})
    set_options(body, req, _OPTIONS)
    if req.user:  # at most 64 characters; a longer id (Claude Code's JSON) is sent as its hash
        body["safety_identifier"] = req.user if len(req.user) <= 64 else hashlib.sha256(req.user.encode()).hexdigest()
    if req.response_format:
        body["text"] = {"format": _encode_format(req.response_format)}
    if req.reasoning:
        body["reasoning"] = {"effort": req.reasoning.as_effort()}
        body["include"] = ["reasoning.encrypted_content"]  # with store false, the only way to replay it
    if req.stream:
        body["stream"] = True
    return body


def count_url(api_base: str, model_id: str) -> str:
    """OpenAI's own input-token counter for a Responses request."""
    return api_base + "/responses/input_tokens"


def count_body(req: Request, model_id: str) -> dict:
    """An input_tokens body: the Responses request without what only generation takes."""
    body = encode_request(req, model_id)
    return {key: value for key, value in body.items() if key not in _GENERATION_ONLY}


def counted(data: dict) -> int:
    """The token count in an input_tokens answer."""
    return int(data["input_tokens"])


def decode_response(body: dict) -> Response:
    """Responses `response` object -> unified Response."""
    if body.get("status") == "failed":
        raise ProtocolError(_failure(body), 502)
    parts = []
    for item in body.get("output") or []:
        kind = item.get("type")
        if kind == "message":
            parts += [Part("text", text=c.get("text") or c.get("refusal") or "")
                      for c in item.get("content") or [] if c.get("type") in ("output_text", "refusal")]
        elif kind == "function_call":
            parts.append(Part("tool_call", id=item.get("call_id", ""), name=item.get("name", ""),
                              arguments=item.get("arguments") or "{}"))
        elif kind == "reasoning":
            parts.append(_reasoning_part(item, native=True))
    return Response(id=body.get("id", ""), model=body.get("model", ""), parts=parts,
                    finish_reason=_incomplete(body) or "stop", usage=usage_of(body))


class StreamDecoder:
    """Responses SSE events -> unified stream events (tool indices are output indices)."""

    def __init__(self):
        self.started = False
        self.calls = {}  # output_index -> whether argument text was seen

    def feed(self, event: str, data: str) -> list:
        """One upstream event as unified events; response.failed and error raise ProtocolError (502)."""
        body = json.loads(data)
        kind = body.get("type") or event
        out = []
        if not self.started:
            self.started = True
            resp = body.get("response") or {}
            out.append(Event("start", id=resp.get("id", ""), model=resp.get("model", "")))
        index = body.get("output_index", 0)
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            out.append(Event("text", text=body.get("delta", "")))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            out.append(Event("reasoning", text=body.get("delta", "")))
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = body.get("item") or {}
            if item.get("type") == "function_call":
                out += self._call(index, item)
            elif item.get("type") == "reasoning" and kind.endswith(".done") and item.get("encrypted_content"):
                out.append(Event("reasoning", signature=_proof(item)))
        elif kind == "response.function_call_arguments.delta":
            self.calls[index] = True
            out.append(Event("tool_args", index=index, text=body.get("delta", "")))
        elif kind == "response.function_call_arguments.done" and not self.calls.get(index, False):
            self.calls[index] = True
            out.append(Event("tool_args", index=index, text=body.get("arguments") or ""))
        elif kind in ("response.completed", "response.incomplete"):
            resp = body.get("response") or {}
            out.append(Event("finish", reason=finish_reason(_incomplete(resp), bool(self.calls))))
            out.append(Event("usage", usage=usage_of(resp)))
        elif kind == "response.failed":
            raise ProtocolError(_failure(body.get("response") or {}), 502)
        elif kind == "error":
            raise ProtocolError(_failure(body), 502)
        return out

    def _call(self, index: int, item: dict) -> list:
        """A function_call item, announced by .added or (from terse upstreams) only by .done."""
        out = []
        if index not in self.calls:
            self.calls[index] = False
            out.append(Event("tool_call", index=index, id=item.get("call_id") or _new_id("call"),
                             name=item.get("name", "")))
        if item.get("arguments") and not self.calls[index]:
            self.calls[index] = True
            out.append(Event("tool_args", index=index, text=item["arguments"]))
        return out


def encode_usage(u: Usage) -> dict:
    """Unified Usage -> Responses usage (input counts cached tokens, output counts reasoning)."""
    return {"input_tokens": u.input,
            "input_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": u.cache_write},
            "output_tokens": u.output, "output_tokens_details": {"reasoning_tokens": u.reasoning},
            "total_tokens": u.input + u.output}


# ---------------------------------------------------------------- helpers

_TERMINAL_EVENT = {"completed": "response.completed", "incomplete": "response.incomplete",
                   "failed": "response.failed"}
# The two items whose text streams: (list of parts, part event, its index field, text event).
_TEXT_ITEMS = {"message": ("content", "response.content_part", "content_index", "response.output_text"),
               "reasoning": ("summary", "response.reasoning_summary_part", "summary_index",
                             "response.reasoning_summary_text")}
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_HOSTED = "runs on OpenAI's servers"
_OPTIONS = {"max_output_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p",
            "prompt_cache_key": "cache_key"}  # wire name -> Request field; no top_k or stop in the API
_GENERATION_ONLY = ("stream", "store", "include", "max_output_tokens", "temperature", "top_p", "safety_identifier",
                    "prompt_cache_key")
_WITH_RESPONSE = frozenset(TERMINAL + ("response.created", "response.in_progress", "response.queued"))
NAMESPACE_JOIN = "__"  # a namespaced tool travels as <namespace>__<name>
_CUSTOM_INPUT = {"type": "object", "properties": {"input": {"type": "string", "description":
                 "the tool's whole input as free text, in the format its description gives"}},
                 "required": ["input"]}
# Items that record a call of a hosted tool (and what it returned): other providers never made them.
_HOSTED_ITEMS = ("web_search_call", "file_search_call", "image_generation_call", "code_interpreter_call",
                 "computer_call", "computer_call_output", "mcp_call", "mcp_list_tools", "mcp_approval_request",
                 "mcp_approval_response", "tool_search_call", "tool_search_output", "local_shell_call",
                 "local_shell_call_output")


def _decode_items(items: list, req: Request) -> None:
    """Input items -> req.messages (and system text), merging the items of one turn."""
    names = {}  # call_id -> function name, so results can carry the name (Gemini needs it)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProtocolError(f"input[{i}] must be an object")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            parts = _content_parts(item.get("content"), i)
            if role in ("system", "developer"):
                add_system(req, parts)
            elif role == "user":
                req.messages.append(Message("user", parts))
            elif role == "assistant":
                _turn(req, "assistant").parts += parts
            else:
                raise ProtocolError(f"input[{i}].role: unknown role {role!r}")
        elif kind in ("function_call", "custom_tool_call"):
            name = item.get("name", "")
            if item.get("namespace"):
                name = item["namespace"] + NAMESPACE_JOIN + name
            names[item.get("call_id", "")] = name
            arguments = item.get("arguments") or "{}" if kind == "function_call" else \
                json.dumps({"input": item.get("input") or ""})
            _turn(req, "assistant").parts.append(Part("tool_call", id=item.get("call_id", ""), name=name,
                                                      arguments=arguments))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id", "")
            _turn(req, "tool").parts.append(Part("tool_result", id=call_id, name=names.get(call_id, ""),
                                                 content=_output_parts(item.get("output"), i)))
        elif kind == "reasoning":
            _turn(req, "assistant").parts.append(_reasoning_part(item))
        elif kind == "item_reference":
            raise ProtocolError(f"input[{i}]: item_reference needs items stored at OpenAI; send the item itself")
        elif kind in _HOSTED_ITEMS:
            continue  # a hosted tool's call and result: the target never ran it and cannot take it
        else:
            raise ProtocolError(f"input[{i}]: item type {kind!r} cannot be translated for a non-Responses "
                                "upstream (it belongs to a tool that " + _HOSTED + " or to the client)")


def _turn(req: Request, role: str) -> Message:
    """The message to extend: the last one if it has this role, else a new one."""
    if not req.messages or req.messages[-1].role != role:
        req.messages.append(Message(role, []))
    return req.messages[-1]


def _content_parts(content, i: int) -> list:
    """Message content (string or parts) -> unified Parts."""
    where = f"input[{i}].content"
    return [_content_part(part, where) for part in content_items(content, where, "an array")]


def _content_part(part, where: str) -> Part:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return Part("text", text=part.get("text") or "")
    if kind == "refusal":
        return Part("text", text=part.get("refusal") or "")
    if kind == "input_image" and part.get("image_url"):
        return media_part(part["image_url"])
    if kind == "input_file" and part.get("file_url"):
        return media(type_of(part["file_url"]), url=part["file_url"], file=True)
    if kind == "input_file" and part.get("file_data"):
        data = part["file_data"]
        if data.startswith("data:"):
            return media_part(data, "application/pdf", file=True)
        return media(type_of(part.get("filename") or "", "application/pdf"), data=data, file=True)
    if kind in ("input_image", "input_file"):
        raise ProtocolError(f"{where}: {kind} by file_id needs files stored at OpenAI; send the data or a URL")
    raise ProtocolError(f"{where}: content type {kind!r} cannot be translated for a non-Responses upstream")


def _output_parts(output, i: int) -> list:
    """A function_call_output's output (string or input_text/input_image list) -> Parts."""
    if output is None or isinstance(output, str):
        return [Part("text", text=output or "")]
    if not isinstance(output, list):
        raise ProtocolError(f"input[{i}].output must be a string or an array")
    return [_content_part(part, f"input[{i}].output") for part in output]


def _reasoning_part(item: dict, native: bool = False) -> Part:
    """A reasoning item: raw reasoning text if given, else its summary.

    From a client the encrypted content is the carrier of a sealed proof; from OpenAI
    (native) the whole item is the proof that replays it.
    """
    texts = [c.get("text", "") for c in item.get("content") or [] if c.get("type") == "reasoning_text"]
    texts = texts or [s.get("text", "") for s in item.get("summary") or []]
    signature = item.get("encrypted_content") or ""
    if native and signature:
        signature = _proof(item)
    return Part("reasoning", text="\n\n".join(texts), id=item.get("id", ""), signature=signature)


def _proof(item: dict) -> str:
    """A reasoning item, as OpenAI sent it, as the native proof that replays it."""
    keep = {"type": "reasoning", "id": item.get("id", ""), "encrypted_content": item["encrypted_content"],
            "summary": item.get("summary") or []}
    return proof(NAME, item=keep)


def _client_call(item: dict, request: Request | None) -> dict:
    """A function_call item as the client declared the tool: namespaced, or a custom tool's call."""
    tool = next((t for t in request.tools if t.name == item["name"]), None) if request else None
    if tool is None or (tool.kind != "custom" and not tool.namespace):
        return item
    name = tool.original_name or tool.name
    if tool.kind == "custom":
        try:
            value = json.loads(item["arguments"] or "{}")
        except ValueError:
            value = item["arguments"]
        text = value.get("input", "") if isinstance(value, dict) else value
        out = {"id": "ctc_" + item["id"].removeprefix("fc_"), "type": "custom_tool_call", "status": item["status"],
               "call_id": item["call_id"], "name": name, "input": text if isinstance(text, str) else json.dumps(text)}
    else:
        out = {**item, "name": name}
    if tool.namespace:
        out["namespace"] = tool.namespace
    return out


def _decode_tools(body: dict, req: Request) -> None:
    for tool in body.get("tools") or []:
        kind = tool.get("type")
        if kind == "function":
            req.tools.append(Tool(tool.get("name", ""), tool.get("description") or "", tool.get("parameters") or {}))
        elif kind == "custom":
            req.tools.append(Tool(tool.get("name", ""), tool.get("description") or "", _CUSTOM_INPUT, kind="custom"))
        elif kind == "namespace":
            space = tool.get("name", "")
            for inner in tool.get("tools") or []:
                custom = inner.get("type") == "custom"
                req.tools.append(Tool(space + NAMESPACE_JOIN + inner.get("name", ""),
                                      inner.get("description") or tool.get("description") or "",
                                      _CUSTOM_INPUT if custom else inner.get("parameters") or {},
                                      kind="custom" if custom else "function",
                                      namespace=space, original_name=inner.get("name", "")))
        else:  # web_search, file_search, image_generation...: only OpenAI can run them
            req.dropped.append(str(kind))
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise ProtocolError(f"tool_choice {choice!r} is not one of auto, none, required")
        req.tool_choice = ToolChoice(choice)
    elif isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function":
            req.tool_choice = ToolChoice("required", choice.get("name", ""))
        elif kind == "allowed_tools":  # a subset of the tools, as auto or required
            allowed = {t.get("name") for t in choice.get("tools") or [] if t.get("type") == "function"}
            req.tools = [t for t in req.tools if t.name in allowed]
            mode = choice.get("mode") or "auto"
            if mode not in ("auto", "required"):
                raise ProtocolError(f"tool_choice.mode {mode!r} is not one of auto, required")
            req.tool_choice = ToolChoice(mode)
        else:
            raise ProtocolError(f"tool_choice type {kind!r} {_HOSTED}; it cannot be translated")


def _decode_format(fmt):
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_schema":
        return chat.json_schema_format(fmt)
    if fmt["type"] == "json_object":
        return ResponseFormat("json_object")
    raise ProtocolError(f"text.format type {fmt['type']!r} is not one of text, json_schema, json_object")


def _encode_format(fmt: ResponseFormat) -> dict:
    if fmt.kind == "json_schema":
        return {"type": "json_schema", **chat.json_schema_spec(fmt)}
    return {"type": "json_object"}


def _encode_message(msg: Message) -> list:
    """One unified message -> Responses input items, in part order."""
    items = []
    for p in msg.parts:
        if p.kind == "tool_result":
            items.append({"type": "function_call_output", "call_id": p.id, "output": _encode_output(p)})
        elif p.kind == "tool_call":
            items.append({"type": "function_call", "call_id": p.id, "name": p.name,
                          "arguments": p.arguments or "{}"})
        elif p.kind == "reasoning":
            # Only OpenAI's own reasoning items can be replayed to it, exactly as it sent them.
            native = native_proof(p.signature, NAME)
            if native:
                items.append(native["item"])
        else:
            role = {"assistant": "assistant", "system": "developer"}.get(msg.role, "user")
            part = _encode_part(p, role)
            if items and items[-1].get("type") == "message" and items[-1]["role"] == role:
                items[-1]["content"].append(part)
            else:
                items.append({"type": "message", "role": role, "content": [part]})
    return items


def _encode_part(p: Part, role: str) -> dict:
    if p.kind == "file":
        if p.url:
            return {"type": "input_file", "file_url": p.url}
        return {"type": "input_file", "filename": "file." + extension_of(p.media_type), "file_data": data_url(p)}
    if p.kind == "image":
        return {"type": "input_image", "image_url": data_url(p), "detail": "auto"}
    return {"type": "output_text" if role == "assistant" else "input_text", "text": p.text}


def _encode_output(p: Part):
    """A tool result as a string (text only) or an input_text/input_image list."""
    prefix = "Error: " if p.is_error else ""
    if all(c.kind == "text" for c in p.content):
        return prefix + "\n".join(c.text for c in p.content)
    parts = [_encode_part(c, "user") for c in p.content]
    return [{"type": "input_text", "text": prefix.strip()}] + parts if prefix else parts


def _error_fields(status: int, message: str) -> dict:
    """An `error` event's fields: the documented flat ones and the `error` object the SDK raises on."""
    err = error_body(status, message)["error"]
    return {"code": err["code"] or err["type"], "message": message, "param": None, "error": err}


def _message_item(item_id: str, text: str, status: str) -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _reasoning_item(item_id: str, text: str, signature: str) -> dict:
    item = {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}
    if signature:
        item["encrypted_content"] = signature
    return item


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def _response_object(rid: str, model: str, created: int, output: list, finish, usage) -> dict:
    """A `response` object; finish None means still in progress (no usage yet)."""
    status = "in_progress" if finish is None else \
        "failed" if finish == "error" else "incomplete" if finish in _INCOMPLETE else "completed"
    return {"id": rid, "object": "response", "created_at": created, "status": status,
            "error": {"code": "server_error", "message": "the upstream model stopped with an error"}
            if status == "failed" else None,
            "incomplete_details": {"reason": _INCOMPLETE[finish]} if status == "incomplete" else None,
            "instructions": None, "max_output_tokens": None, "model": model, "output": output,
            "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
            "store": False, "temperature": None, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
            "tools": [], "top_p": None, "truncation": "disabled", "metadata": {},
            "usage": encode_usage(usage) if usage is not None else None}


def _incomplete(resp: dict) -> str | None:
    """An incomplete response's reason as a unified finish reason (None when it completed)."""
    if resp.get("status") != "incomplete":
        return None
    return "content_filter" if (resp.get("incomplete_details") or {}).get("reason") == "content_filter" else "length"


def _failure(body: dict) -> str:
    err = body.get("error") or {}
    if isinstance(err, dict):
        return str(err.get("message") or body.get("message") or "upstream response failed")
    return str(err)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


PROTOCOL = Protocol(
    name=NAME, title="OpenAI Responses (Codex)", auth="bearer", framing=sse,
    routes=(Route("POST", "/v1/responses", "generate"), Route("POST", "/v1/responses/input_tokens", "count")),
    model_of=model_of, wants_stream=wants_stream, decode_request=decode_request,
    encode_response=encode_response, StreamEncoder=StreamEncoder, stream_error=stream_error,
    error_body=error_body, usage_of=usage_of, stream_usage=stream_usage, is_final=is_final,
    passthrough_body=passthrough_body, drop_sealed=drop_sealed, relay_frame=relay_frame,
    count_request=count_request, count_reply=count_reply,
    request_url=request_url, encode_request=encode_request, decode_response=decode_response,
    StreamDecoder=StreamDecoder, error_message=error_message,
    count_url=count_url, count_body=count_body, counted=counted,
    models_path="/models", model_field=MODEL_FIELD,
    text_fields={"request": ("input", "instructions"), "reply": ("output",),
                 "stream": ("delta", "text", "arguments", "item", "part", "response.output")},
    tool_call_marks=(b'"function_call"', b'"custom_tool_call"'),  # once per call item (outputs don't match)
)
