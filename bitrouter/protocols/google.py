"""Google Gemini (`POST /v1beta/models/{model}:generateContent` and friends), both directions.

Gemini has no tool-call ids: calls get stable ids on the way in (`call_<turn>_<part>`, or
the optional `id` the client sent) and each functionResponse is paired with the latest
model turn's calls by id, then by name, then by position. On the way out the function
name of each result is resolved from the call it answers.
"""

import json
import re
import secrets
from urllib.parse import quote

from bitrouter.protocols import (MEDIA, SEAL_PREFIX, Event, Message, Part, Protocol, ProtocolError, Reasoning,
                                 Request, Response, ResponseFormat, Route, Tool, ToolChoice, Usage, arguments_object,
                                 finish_reason, media, native_proof, proof, reply_model, set_options, sse, type_of)
from bitrouter.protocols import error_message  # the upstream error reader, shared: {"error": {...}}

NAME = "google"
MODEL_FIELD = "modelVersion"  # where a reply names its model: the client's name is put back
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # what goes into models/{id}:generateContent
ACTIONS = ("generateContent", "streamGenerateContent", "countTokens")
# Google's documented placeholder for function calls that came from another model and so
# carry no thought signature of Gemini's own (Gemini 3 refuses such calls otherwise).
FOREIGN_SIGNATURE = "skip_thought_signature_validator"

# ---------------------------------------------------------------- inbound


def model_of(body: dict, path_model: str | None = None) -> str:
    """The model named in the path; `contents` must be an array."""
    contents = body.get("contents", (body.get("generateContentRequest") or {}).get("contents"))
    if not isinstance(contents, list):
        raise ProtocolError("contents: an array of Content objects is required")
    if not path_model:
        raise ProtocolError("the model belongs in the path: models/{model}:generateContent")
    return path_model


def wants_stream(body: dict) -> bool:
    """Gemini streams by method (`:streamGenerateContent`, the route says), never by a body field."""
    return False


def decode_request(body: dict) -> Request:
    """GenerateContentRequest -> unified Request."""
    req = Request(model=body.get("model") or "", messages=[], system=_system_parts(body.get("systemInstruction")))
    pending = []  # [id, name] of the latest model turn's calls not answered yet
    for i, content in enumerate(body["contents"]):
        if not isinstance(content, dict) or not isinstance(content.get("parts", []), list):
            raise ProtocolError(f"contents[{i}]: a Content object with a parts array is required")
        role = content.get("role") or "user"
        if role == "model":
            pending = []
            parts = [p for k, part in enumerate(content.get("parts") or []) for p in _model_part(part, i, k, pending)]
            req.messages.append(Message("assistant", parts))
        elif role in ("user", "function", "tool"):
            results, rest = [], []
            for k, part in enumerate(content.get("parts") or []):
                if not isinstance(part, dict):
                    raise ProtocolError(f"contents[{i}].parts[{k}]: must be an object")
                if "functionResponse" in part:
                    results.append(_result_part(part["functionResponse"] or {}, f"call_{i}_{k}", pending))
                else:
                    rest += _media_parts(part)
            if results:
                req.messages.append(Message("tool", results))
            if rest or not results:
                req.messages.append(Message("user", rest))
        else:
            raise ProtocolError(f"contents[{i}].role: must be 'user' or 'model', not {role!r}")
    for tool in body.get("tools") or []:
        for fd in (tool or {}).get("functionDeclarations") or []:
            schema = fd.get("parametersJsonSchema") or json_schema(fd.get("parameters") or {})
            req.tools.append(Tool(fd.get("name", ""), fd.get("description") or "", schema))
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    allowed = calling.get("allowedFunctionNames") or []
    mode = _MODE_IN.get(calling.get("mode"))
    if mode:
        req.tool_choice = ToolChoice(mode, allowed[0] if mode == "required" and len(allowed) == 1 else "")
    config = body.get("generationConfig") or {}
    req.max_tokens = config.get("maxOutputTokens")
    req.temperature = config.get("temperature")
    req.top_p = config.get("topP")
    req.top_k = config.get("topK")
    req.stop = list(config.get("stopSequences") or [])
    if config.get("responseMimeType") == "application/json":
        schema = config.get("responseJsonSchema") or json_schema(config.get("responseSchema") or {})
        req.response_format = ResponseFormat("json_schema", schema=schema) if schema else ResponseFormat("json_object")
    req.reasoning = _decode_thinking(config.get("thinkingConfig") or {})
    return req


def encode_response(resp: Response, model: str, request: Request | None = None) -> dict:
    """Unified Response -> GenerateContentResponse."""
    parts = _signed([part for p in resp.parts for part in _response_parts(p)])
    candidate = {"content": {"role": "model", "parts": parts or [{"text": ""}]},
                 "finishReason": _FINISH_OUT.get(resp.finish_reason, "STOP"), "index": 0}
    return {"candidates": [candidate], "usageMetadata": encode_usage(resp.usage),
            "modelVersion": model, "responseId": resp.id or _response_id()}


class StreamEncoder:
    """Unified stream events -> `data:` frames of GenerateContentResponse; no [DONE]."""

    def __init__(self, model: str, request: Request):
        self.model = model
        self.id = _response_id()
        self.calls = {}  # unified tool index -> [id, name, argument fragments], sent whole
        self.signature = ""  # a proof waiting for the part it belongs on (the next call or text)
        self.finish_reason = None
        self.usage = None

    def event(self, ev: Event) -> bytes:
        """One unified event as a frame; tool calls are held until the next part or the end, then sent whole."""
        kind = ev.kind
        if kind == "reasoning" and ev.signature:
            self.signature = ev.signature
        if (kind == "text" or kind == "reasoning") and ev.text:
            part = {"text": ev.text, "thought": True} if kind == "reasoning" else {"text": ev.text}
            return self._frame(self._flush() + [part])
        if kind == "tool_call":
            self.calls[ev.index] = [ev.id, ev.name, []]
        elif kind == "tool_args":
            call = self.calls.get(ev.index)
            if call:
                call[2].append(ev.text)
        elif kind == "start":  # the model keeps the name the client asked for
            self.id = ev.id or self.id
        elif kind == "finish":
            self.finish_reason = ev.reason
        elif kind == "usage":
            self.usage = ev.usage
        return b""

    def finish_stream(self) -> bytes:
        """The last frame: the held tool calls, the finish reason and the usage."""
        parts = self._flush() or [{"text": ""}]
        if self.signature:
            parts, self.signature = _signed([{"thoughtSignature": self.signature}] + parts), ""
        candidate = {"content": {"role": "model", "parts": parts},
                     "finishReason": _FINISH_OUT.get(self.finish_reason, "STOP"), "index": 0}
        return sse.frame({"candidates": [candidate], "usageMetadata": encode_usage(self.usage or Usage()),
                          "modelVersion": self.model, "responseId": self.id})

    def _flush(self) -> list:
        """Gemini sends each function call whole: the calls completed so far, as parts."""
        parts = [_call_part(call_id, name, "".join(args)) for call_id, name, args in self.calls.values()]
        self.calls.clear()
        return parts

    def _frame(self, parts: list) -> bytes:
        if self.signature:
            parts, self.signature = _signed([{"thoughtSignature": self.signature}] + parts), ""
        return sse.frame({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
                          "modelVersion": self.model, "responseId": self.id})

    def error(self, status: int, message: str) -> bytes:
        """End a broken stream with the protocol's in-band error (no stream state to close)."""
        return stream_error(status, message)


def stream_error(status: int, message: str) -> bytes:
    """The final frame of a broken stream: Google's error object (the SDK raises on it)."""
    return sse.frame(error_body(status, message))


def error_body(status: int, message: str) -> dict:
    """Google's error object."""
    return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "INTERNAL")}}


def count_request(body: dict) -> Request:
    """The request a `:countTokens` body describes (contents, or a whole generateContentRequest)."""
    return decode_request(body.get("generateContentRequest") or body)


def count_reply(tokens: int) -> dict:
    """The `:countTokens` answer."""
    return {"totalTokens": tokens}


def usage_of(body: dict) -> Usage:
    """Usage from a GenerateContentResponse's usageMetadata (prompt includes cached; thoughts apart)."""
    u = body.get("usageMetadata") or {}
    thoughts = u.get("thoughtsTokenCount") or 0
    return Usage(input=(u.get("promptTokenCount") or 0) + (u.get("toolUsePromptTokenCount") or 0),
                 output=(u.get("candidatesTokenCount") or 0) + thoughts,
                 cache_read=u.get("cachedContentTokenCount") or 0, reasoning=thoughts)


def stream_usage(event: str, data: str) -> Usage | None:
    """Usage in a relayed frame. Gemini repeats running totals on every frame: only the final
    one (with the finish reason) or a usage-only frame is parsed, not each content frame."""
    if '"usageMetadata"' not in data or ('"finishReason"' not in data and '"candidates"' in data):
        return None
    return usage_of(json.loads(data))


def is_final(event: str, data: str) -> bool:
    """Whether a relayed frame is the one that ends the stream: it carries the finish reason."""
    return '"finishReason"' in data


def relay_frame(event: str, raw: bytes, model: str) -> bytes:
    """A passed-through frame as the client gets it: every frame names the client's model."""
    return reply_model(raw, MODEL_FIELD, model)


def drop_sealed(body: dict) -> dict:
    """The body without thought signatures BitRouter sealed for another provider; a function
    call that loses its signature gets Google's placeholder for calls from another model."""
    def part(p):
        if not (isinstance(p, dict) and str(p.get("thoughtSignature") or "").startswith(SEAL_PREFIX)):
            return p
        rest = {k: v for k, v in p.items() if k != "thoughtSignature"}
        return {**rest, "thoughtSignature": FOREIGN_SIGNATURE} if "functionCall" in rest else rest
    def content(c):
        if not (isinstance(c, dict) and isinstance(c.get("parts"), list)):
            return c
        return dict(c, parts=[q for q in map(part, c["parts"]) if q != {}])  # a bare signature part goes whole
    return dict(body, contents=[content(c) for c in body.get("contents") or []])


def passthrough_body(body: dict, model_id: str, stream: bool) -> dict:
    """The client's own body: the model travels in the URL, so nothing changes."""
    return body


def model_list(models: list) -> dict:
    """`GET /v1beta/models` reply for the served (model name, owner) pairs."""
    return {"models": [model_entry(name) for name, _owner in models]}


def model_entry(model_id: str) -> dict:
    """One Model resource."""
    return {"name": "models/" + model_id, "baseModelId": model_id, "version": "bitrouter",
            "displayName": model_id, "supportedGenerationMethods": list(ACTIONS)}


# ---------------------------------------------------------------- upstream


def request_url(api_base: str, model_id: str, stream: bool) -> str:
    """The (streaming) generateContent URL for a model; /v1beta is added to an unversioned base.

    The model id goes into the path, next to the provider's key: anything but a plain
    Gemini id (which could climb to another path, add a query or cut the URL) is a 400.
    """
    base = api_base if api_base.endswith(("/v1beta", "/v1")) else api_base + "/v1beta"
    model_id = model_id.removeprefix("models/")
    if not MODEL_ID.fullmatch(model_id):
        raise ProtocolError(f"{model_id[:80]!r} is not a Gemini model id (letters, digits, '.', '_', '-')")
    model = "models/" + quote(model_id, safe="")
    return f"{base}/{model}:streamGenerateContent?alt=sse" if stream else f"{base}/{model}:generateContent"


def encode_request(req: Request, model_id: str) -> dict:
    """Unified Request -> GenerateContentRequest."""
    body = {"contents": _encode_contents(req.messages)}
    if req.system:
        body["systemInstruction"] = {"parts": [{"text": p.text} for p in req.system if p.text]}
    if req.tools:
        declarations = []
        for t in req.tools:
            fd = {"name": t.name, "description": t.description}
            if t.parameters:  # `parameters` is what every Gemini endpoint takes, in its own subset
                fd["parameters"] = gemini_schema(t.parameters)
            declarations.append(fd)
        body["tools"] = [{"functionDeclarations": declarations}]
        if req.tool_choice:
            calling = {"mode": _MODE_OUT[req.tool_choice.mode]}
            if req.tool_choice.name:
                calling["allowedFunctionNames"] = [req.tool_choice.name]
            body["toolConfig"] = {"functionCallingConfig": calling}
    config = {}
    set_options(config, req, _OPTIONS)
    if req.response_format:
        config["responseMimeType"] = "application/json"
        if req.response_format.schema:
            config["responseJsonSchema"] = req.response_format.schema
    thinking = _encode_thinking(req.reasoning)
    if thinking:
        config["thinkingConfig"] = thinking
    if config:
        body["generationConfig"] = config
    return body


def count_url(api_base: str, model_id: str) -> str:
    """Gemini's own token counter for a model."""
    return request_url(api_base, model_id, False).removesuffix(":generateContent") + ":countTokens"


def count_body(req: Request, model_id: str) -> dict:
    """A countTokens body: the whole request, so tools and instructions are counted too."""
    model = model_id if model_id.startswith("models/") else "models/" + model_id
    return {"generateContentRequest": {"model": model, **encode_request(req, model_id)}}


def counted(data: dict) -> int:
    """The token count in a countTokens answer."""
    return int(data["totalTokens"])


def decode_response(body: dict) -> Response:
    """GenerateContentResponse -> unified Response."""
    candidate = (body.get("candidates") or [{}])[0]
    parts = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        parts += _reply_parts(part)
    reason = candidate.get("finishReason")
    if not body.get("candidates") and (body.get("promptFeedback") or {}).get("blockReason"):
        reason = "SAFETY"
    return Response(id=body.get("responseId", ""), model=body.get("modelVersion", ""), parts=parts,
                    finish_reason=_FINISH_IN.get(reason, "stop"), usage=usage_of(body))


class StreamDecoder:
    """Gemini `data:` frames (each a GenerateContentResponse) -> unified stream events."""

    def __init__(self):
        self.started = False
        self.calls = 0
        self.usage = None
        self.finished = False

    def feed(self, event: str, data: str) -> list:
        """One upstream frame as unified events; an error object raises ProtocolError (502)."""
        chunk = json.loads(data)
        if isinstance(chunk, list):  # an error relayed as a JSON array
            chunk = chunk[0] if chunk else {}
        if chunk.get("error"):
            raise ProtocolError((chunk["error"] or {}).get("message") or "upstream stream error", 502)
        out = []
        if not self.started:
            self.started = True
            out.append(Event("start", id=chunk.get("responseId", ""), model=chunk.get("modelVersion", "")))
        candidate = (chunk.get("candidates") or [{}])[0]
        for part in (candidate.get("content") or {}).get("parts") or []:
            for p in _reply_parts(part):
                if p.kind == "tool_call":
                    out.append(Event("tool_call", index=self.calls, id=p.id, name=p.name))
                    out.append(Event("tool_args", index=self.calls, text=p.arguments))
                    self.calls += 1
                elif p.text or p.signature:
                    out.append(Event(p.kind, text=p.text, signature=p.signature))
        if chunk.get("usageMetadata"):
            self.usage = usage_of(chunk)
        reason = candidate.get("finishReason")
        if reason:
            self.finished = True
            out.append(Event("finish", reason=finish_reason(_FINISH_IN.get(reason), self.calls > 0)))
        if self.usage and self.finished and (reason or chunk.get("usageMetadata")):
            out.append(Event("usage", usage=self.usage))  # with the finish, and any later correction
        return out


def encode_usage(u: Usage) -> dict:
    """Unified Usage -> usageMetadata: candidates exclude the thinking tokens, counted apart."""
    out = {"promptTokenCount": u.input, "candidatesTokenCount": max(0, u.output - u.reasoning),
           "totalTokenCount": u.input + u.output}
    if u.cache_read:
        out["cachedContentTokenCount"] = u.cache_read
    if u.reasoning:
        out["thoughtsTokenCount"] = u.reasoning
    return out


def gemini_schema(schema, root=None, depth: int = 0):
    """A JSON Schema as Gemini's Schema subset: what it refuses is rewritten or left out.

    Type arrays become `nullable`, `const` an enum, `oneOf` anyOf, local `$ref`s are
    inlined (to a bounded depth); `$schema`, `additionalProperties`, `propertyNames`,
    `exclusiveMinimum` and everything else outside the subset are dropped.
    """
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return {}
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = root
        for key in ref[2:].split("/"):
            target = target.get(key) if isinstance(target, dict) else None
        return gemini_schema(target, root, depth + 1) if isinstance(target, dict) else {}
    out = {}
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        if len(kinds) < len(kind):
            out["nullable"] = True
        kind = kinds[0] if kinds else None
    if isinstance(kind, str):
        out["type"] = kind
    for key, value in schema.items():
        if key in ("properties",) and isinstance(value, dict):
            out[key] = {name: gemini_schema(s, root, depth + 1) for name, s in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = gemini_schema(value, root, depth + 1)
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            out["anyOf"] = [gemini_schema(s, root, depth + 1) for s in value]
        elif key == "const" and isinstance(value, str):  # only string constants have a Gemini form
            out["enum"] = [value]
        elif key == "enum" and isinstance(value, list):
            if all(isinstance(v, str) for v in value):  # Gemini's enums are lists of strings
                out["enum"] = value
        elif key in _SCHEMA_KEYS:
            out[key] = value
    if isinstance(out.get("required"), list):
        out["required"] = [name for name in out["required"] if name in out.get("properties", {})]
    if "enum" in out:
        out["type"] = "string"
    return out


def json_schema(schema):
    """Gemini's OpenAPI-style Schema (upper-case types, `nullable`) -> plain JSON Schema."""
    if isinstance(schema, list):
        return [json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            out["type"] = value.lower()
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: json_schema(s) for name, s in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "not", "additionalProperties"):
            out[key] = json_schema(value)
        elif key != "nullable":
            out[key] = value
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


# ---------------------------------------------------------------- helpers

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 402: "FAILED_PRECONDITION", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 405: "NOT_FOUND", 409: "ABORTED", 413: "INVALID_ARGUMENT",
           429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
           502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
             "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR")
# Gemini's finish reasons, unified; any other (OTHER, LANGUAGE...) counts as STOP.
_FINISH_IN = {"STOP": "stop", "MAX_TOKENS": "length", "MALFORMED_FUNCTION_CALL": "error",
              "UNEXPECTED_TOOL_CALL": "error", **dict.fromkeys(_FILTERED, "content_filter")}
_FINISH_OUT = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY",
               "error": "OTHER"}
_OPTIONS = {"maxOutputTokens": "max_tokens", "temperature": "temperature", "topP": "top_p", "topK": "top_k",
            "stopSequences": "stop"}  # generationConfig name -> Request field
_MODE_IN = {"AUTO": "auto", "VALIDATED": "auto", "NONE": "none", "ANY": "required"}
_MODE_OUT = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_LEVEL_IN = {"MINIMAL": "low", "LOW": "low", "MEDIUM": "medium", "HIGH": "high", "XHIGH": "high"}
_OUTPUT_KEYS = ("output", "result", "content")  # how clients name a function's result
# Schema fields Gemini's function declarations take as they are (the rest is rewritten or dropped).
_SCHEMA_KEYS = {"format", "title", "description", "nullable", "maxItems", "minItems", "required", "minProperties",
                "maxProperties", "minLength", "maxLength", "pattern", "example", "propertyOrdering", "default",
                "minimum", "maximum"}
_MAX_SCHEMA_DEPTH = 24


def _system_parts(system) -> list:
    """systemInstruction as a Content object (or a bare string) -> text Parts, in order."""
    if isinstance(system, str):
        return [Part("text", text=system)] if system else []
    parts = system.get("parts") or [] if isinstance(system, dict) else []
    return [Part("text", text=p["text"]) for p in parts if isinstance(p, dict) and p.get("text")]


def _model_part(part: dict, i: int, k: int, pending: list) -> list:
    """One part of a model turn as Parts; a thoughtSignature (the carrier of a sealed proof,
    usually on a function call) becomes a reasoning part before it; calls get the client's
    id or a stable minted one."""
    if not isinstance(part, dict):
        raise ProtocolError(f"contents[{i}].parts[{k}]: must be an object")
    signature = part.get("thoughtSignature") or ""
    if part.get("thought") and "text" in part:
        return [Part("reasoning", text=part["text"], signature=signature)]
    out = [Part("reasoning", signature=signature)] if signature else []
    call = part.get("functionCall")
    if call is not None:
        call_id = call.get("id") or f"call_{i}_{k}"
        pending.append([call_id, call.get("name", "")])
        return out + [Part("tool_call", id=call_id, name=call.get("name", ""),
                           arguments=json.dumps(call.get("args") or {}))]
    return out + _media_parts(part)[:1]


def _result_part(response: dict, fallback_id: str, pending: list) -> Part:
    """A functionResponse, paired with the call it answers (id, else name, else position)."""
    name = response.get("name", "")
    match = next((c for c in pending if response.get("id") and c[0] == response["id"]), None) \
        or next((c for c in pending if c[1] == name), None) or (pending[0] if pending else None)
    if match:
        pending.remove(match)
    call_id = response.get("id") or (match[0] if match else fallback_id)
    value = response.get("response")
    is_error = isinstance(value, dict) and "error" in value and not any(k in value for k in _OUTPUT_KEYS)
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _OUTPUT_KEYS + ("error",):
        value = next(iter(value.values()))
    text = value if isinstance(value, str) else json.dumps(value)
    content = [Part("text", text=text)]
    for extra in response.get("parts") or []:  # multimodal function responses
        content += _media_parts(extra)
    return Part("tool_result", id=call_id, name=name or (match[1] if match else ""), content=content,
                is_error=is_error)


def _media_parts(part: dict) -> list:
    """Text, inline data and file URIs; code-execution parts have no unified form."""
    if "text" in part:
        return [Part("text", text=part["text"])] if part["text"] else []
    if "inlineData" in part:
        blob = part["inlineData"] or {}
        return [media(blob.get("mimeType") or "image/png", data=blob.get("data") or "")]
    if "fileData" in part:
        ref = part["fileData"] or {}
        return [media(ref.get("mimeType") or "", url=ref.get("fileUri") or "")]
    return []


def _decode_thinking(thinking: dict) -> Reasoning | None:
    budget = thinking.get("thinkingBudget")
    if budget is not None:
        if budget == 0:
            return None
        return Reasoning(budget_tokens=budget) if budget > 0 else Reasoning(effort="medium")  # -1: dynamic
    level = str(thinking.get("thinkingLevel") or "").upper()
    return Reasoning(effort=_LEVEL_IN[level]) if level in _LEVEL_IN else None


def _encode_thinking(reasoning: Reasoning | None) -> dict | None:
    if not reasoning:
        return None
    budget = reasoning.as_budget()
    return {"thinkingBudget": budget, "includeThoughts": True} if budget else None


def _encode_contents(messages: list) -> list:
    """Unified messages -> Contents; results carry their call's function name, turns are merged."""
    names = {p.id: p.name for m in messages if m.role == "assistant" for p in m.parts if p.kind == "tool_call"}
    out = []
    for msg in messages:
        role = "model" if msg.role == "assistant" else "user"
        parts = []
        for p in msg.parts:
            parts += _request_parts(p, names)
        if msg.role == "system":  # no system turns mid-conversation: its text joins the user turn in place
            parts = [{"text": "System: " + part["text"]} for part in parts if "text" in part]
        if role == "model":
            parts = _signed(parts)
            first_call = next((p for p in parts if "functionCall" in p), None)
            if first_call is not None and "thoughtSignature" not in first_call:
                first_call["thoughtSignature"] = FOREIGN_SIGNATURE
        if not parts:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["parts"] += parts
        else:
            out.append({"role": role, "parts": parts})
    return out


def _request_parts(p: Part, names: dict) -> list:
    if p.kind == "text":
        return [{"text": p.text}] if p.text else []
    if p.kind in MEDIA:  # Gemini takes any media type, inline or by URI
        if p.url:
            default_type = "image/jpeg" if p.kind == "image" else "application/pdf"
            return [{"fileData": {"mimeType": p.media_type or type_of(p.url, default_type), "fileUri": p.url}}]
        return [{"inlineData": {"mimeType": p.media_type or "image/png", "data": p.data}}]
    if p.kind == "tool_call":
        return [{"functionCall": {"name": p.name, "args": arguments_object(p.arguments)}}]
    if p.kind == "tool_result":
        text = "\n".join(c.text for c in p.content if c.kind == "text")
        response = {"name": p.name or names.get(p.id, ""), "response": {"error" if p.is_error else "output": text}}
        extra = [part for c in p.content if c.kind in MEDIA for part in _request_parts(c, names)]
        return [{"functionResponse": response}] + extra
    if p.kind == "reasoning":  # only Gemini's own signatures; its thoughts' text is not sent back
        native = native_proof(p.signature, NAME)
        return [{"thoughtSignature": native["signature"]}] if native else []
    return []


def _reply_parts(part: dict) -> list:
    """Parts of a model reply; a thoughtSignature becomes a reasoning part (the native proof)
    before the part it was on; function calls get fresh unique ids (Gemini sends none or its own)."""
    signature = part.get("thoughtSignature")
    if "text" in part and part.get("thought"):
        return [Part("reasoning", text=part["text"], signature=proof(NAME, signature=signature) if signature else "")]
    out = [Part("reasoning", signature=proof(NAME, signature=signature))] if signature else []
    call = part.get("functionCall")
    if call is not None:
        return out + [Part("tool_call", id=call.get("id") or "call_" + secrets.token_hex(12), name=call.get("name", ""),
                           arguments=json.dumps(call.get("args") or {}))]
    if "text" in part and part["text"]:
        return out + [Part("text", text=part["text"])]
    return out


def _response_parts(p: Part) -> list:
    """A reply part for the client; a proof goes bare, for _signed to put on its call."""
    if p.kind == "reasoning":
        return ([{"text": p.text, "thought": True}] if p.text else []) + \
            ([{"thoughtSignature": p.signature}] if p.signature else [])
    if p.kind == "tool_call":
        return [_call_part(p.id, p.name, p.arguments)]
    return [{"text": p.text}] if p.kind == "text" else []


def _signed(parts: list) -> list:
    """Parts with each bare thoughtSignature moved onto the next function call (or text) part.

    Gemini puts a turn's signature on its first function call, and clients such as Gemini
    CLI keep it there while they drop thought parts from their history.
    """
    out, signature = [], ""
    for part in parts:
        if set(part) == {"thoughtSignature"}:
            signature = signature or part["thoughtSignature"]
            continue
        if signature and not part.get("thought") and ("functionCall" in part or "text" in part):
            part, signature = {**part, "thoughtSignature": signature}, ""
        out.append(part)
    if signature:
        out.append({"text": "", "thoughtSignature": signature})
    return out


def _call_part(call_id: str, name: str, arguments: str) -> dict:
    call = {"name": name, "args": arguments_object(arguments)}
    if call_id:
        call["id"] = call_id  # clients echo it in functionResponse.id, which keeps pairing exact
    return {"functionCall": call}


def _response_id() -> str:
    return secrets.token_urlsafe(16)


PROTOCOL = Protocol(
    name=NAME, title="Gemini-compatible (generateContent)", auth="x-goog-api-key", framing=sse,
    # The model and the method travel in the path (`models/{model}:{method}`), under /v1beta
    # and, for clients whose base URL ends in /v1, under /v1 too.
    routes=tuple(Route("POST", f"{root}/models/<model:re:.+><:re::{method}>", kind, stream)
                 for root in ("/v1beta", "/v1")
                 for method, kind, stream in (("generateContent", "generate", False),
                                              ("streamGenerateContent", "generate", True),
                                              ("countTokens", "count", None)))
    + tuple(Route("POST", f"{root}/models/<model:path>", "unserved") for root in ("/v1beta", "/v1"))
    + (Route("GET", "/v1beta/models", "models"), Route("GET", "/v1beta/models/<model:path>", "model")),
    client_prefixes=("/v1beta/",),
    model_of=model_of, wants_stream=wants_stream, decode_request=decode_request,
    encode_response=encode_response, StreamEncoder=StreamEncoder, stream_error=stream_error,
    error_body=error_body, usage_of=usage_of, stream_usage=stream_usage, is_final=is_final,
    passthrough_body=passthrough_body, drop_sealed=drop_sealed, relay_frame=relay_frame,
    count_request=count_request, count_reply=count_reply, model_list=model_list, model_entry=model_entry,
    request_url=request_url, encode_request=encode_request, decode_response=decode_response,
    StreamDecoder=StreamDecoder, error_message=error_message,
    count_url=count_url, count_body=count_body, counted=counted,
    models_path="/v1beta/models", models_list_key="models", models_id_key="name", model_field=MODEL_FIELD,
    text_fields={"request": ("contents", "systemInstruction", "system_instruction"), "reply": ("candidates",),
                 "stream": ("candidates",)},
    tool_call_marks=(b'"functionCall"',),  # once per call part
)
