"""Wire protocols and the unified model they translate through.

Each protocol module (chat = Chat Completions, `api_protocol: openai`; responses, anthropic, google) speaks one
wire format in both directions; mock is the in-process provider instead (generate, stream):

  inbound  (client -> BitRouter): NAME, model_of, wants_stream, decode_request,
           encode_response, StreamEncoder (.event, .finish_stream, and .error when ending a
           broken stream needs the stream's state), stream_error,
           error_body, usage_of, stream_usage, is_final, passthrough_body
  upstream (BitRouter -> provider): FIXED_HEADERS, FORWARD_HEADERS, request_url,
           encode_request, decode_response, StreamDecoder, error_message

Same-protocol traffic never touches the unified model: the body is forwarded with only
`model` rewritten and the upstream's SSE frames are relayed as they arrive (with the
reply's model name set back to the one the client asked for: see reply_model).

Reasoning proofs (Anthropic thinking signatures, Responses encrypted_content, Gemini
thoughtSignature, Chat reasoning_content) are opaque: each upstream decoder puts its own
protocol's native proof, as a JSON string, in `Part.signature`; the server seals it with
the producing endpoint's label before the client sees it (seal) and, on a later turn,
hands each upstream only the proofs it produced itself (own_proofs).
"""

import base64
import dataclasses
import functools
import importlib
import json
import re
import typing
from dataclasses import dataclass, field
from typing import Literal

from bitrouter import StatusError


PartKind = Literal["text", "image", "file", "tool_call", "tool_result", "reasoning"]
PART_KINDS = frozenset(typing.get_args(PartKind))
MEDIA = ("image", "file")  # the part kinds that carry a url or base64 data with a media type
EventKind = Literal["start", "text", "reasoning", "tool_call", "tool_args", "finish", "usage"]
EVENT_KINDS = frozenset(typing.get_args(EventKind))
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


@dataclass
class Part:
    """One piece of message content; kind is one of PartKind, checked when the part is built.

      text: text;  reasoning: text (+ signature)
      image: url or data + media_type (image/*, or unknown for an image URL)
      file: url or data + media_type (a PDF, plain text...: anything not an image)
      tool_call: id, name, arguments (a JSON string)
      tool_result: id, name, content (list of text/image/file Parts), is_error
    """

    kind: PartKind
    text: str = ""
    url: str = ""
    data: str = ""
    media_type: str = ""
    id: str = ""
    name: str = ""
    arguments: str = ""
    content: list = field(default_factory=list)
    is_error: bool = False
    signature: str = ""

    def __post_init__(self):
        if self.kind not in PART_KINDS:
            raise ValueError(f"part kind {self.kind!r} is not one of {', '.join(sorted(PART_KINDS))}")
        if self.kind == "image" and self.media_type and not self.media_type.startswith("image/"):
            raise ValueError(f"an image part cannot have media type {self.media_type!r}: it is a file")


@dataclass
class Message:
    """A turn in the conversation: role is user | assistant | tool | system.

    A system message here is one found mid-conversation (Claude Code, Codex): it keeps its
    position; the leading instructions are Request.system.
    """

    role: str
    parts: list


@dataclass
class Tool:
    """A function the model may call; parameters is a JSON schema.

    A Responses client's namespaced tool is flattened to `<namespace>__<name>` (namespace
    keeps the original), and a freeform `custom` tool (kind "custom", e.g. Codex's
    apply_patch) is a function with one string argument, `input`; the Responses encoder
    turns calls of either back into what the client declared.
    """

    name: str
    description: str = ""
    parameters: dict = field(default_factory=dict)
    kind: str = "function"  # function | custom
    namespace: str = ""
    original_name: str = ""  # the name inside its namespace


@dataclass(frozen=True)
class ToolChoice:
    """Whether the model may call tools (auto), must not (none) or must (required); name forces one tool."""

    mode: Literal["auto", "none", "required"] = "auto"
    name: str = ""  # the one tool that must be called (mode is then required)

    @property
    def forced(self) -> bool:
        """Whether the model must call a tool (Anthropic refuses thinking then)."""
        return self.mode == "required"


@dataclass
class ResponseFormat:
    """Structured output: any JSON object, or JSON that matches a schema."""

    kind: Literal["json_object", "json_schema"]
    name: str = "response"  # json_schema only, like the rest
    schema: dict = field(default_factory=dict)
    strict: bool | None = None


# Thinking budgets in tokens for an effort: Anthropic and Gemini take budgets (Anthropic at least 1024).
EFFORT_BUDGET = {"minimal": 512, "low": 2048, "medium": 8192, "high": 24576}


@dataclass
class Reasoning:
    """Thinking asked for: an effort (as the client named it: low, medium, high...) and/or a budget in tokens."""

    effort: str | None = None
    budget_tokens: int | None = None

    def as_effort(self) -> str:
        """The effort asked, else the one nearest to the budget (OpenAI's APIs take efforts)."""
        if self.effort:
            return self.effort
        budget = self.budget_tokens or 0
        return "low" if budget < 4096 else "medium" if budget < 16384 else "high"

    def as_budget(self) -> int | None:
        """The budget asked, else the effort's budget (EFFORT_BUDGET); None for an effort without one."""
        return self.budget_tokens or EFFORT_BUDGET.get(self.effort)


@dataclass
class Request:
    """A generation request in protocol-neutral form."""

    model: str
    messages: list
    system: list = field(default_factory=list)  # text Parts, in order
    tools: list = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list = field(default_factory=list)
    response_format: ResponseFormat | None = None
    reasoning: Reasoning | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    cache_key: str | None = None  # a prompt-cache / session key (Responses prompt_cache_key)
    dropped: list = field(default_factory=list)  # hosted tools left out: the target cannot run them


@dataclass
class Usage:
    """Token counts. input counts cached tokens too; output counts reasoning tokens too."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclass
class Response:
    """A complete (non-streamed) generation result.

    finish_reason is one of FinishReason, as is a finish Event's reason; the finish rule
    (finish_reason()) is applied when the response is built.
    """

    id: str
    model: str
    parts: list
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self):
        self.finish_reason = finish_reason(self.finish_reason, any(p.kind == "tool_call" for p in self.parts))


@dataclass
class Event:
    """One unified stream event.

    kind: start | text | reasoning | tool_call | tool_args | finish | usage
      text: text;  reasoning: text and/or signature (the provider's proof of its thinking)
      tool_call: index, id, name;  tool_args: index, text
      finish: reason;  usage: usage;  start: id, model
    """

    kind: EventKind
    text: str = ""
    index: int = 0
    id: str = ""
    name: str = ""
    reason: str = ""
    model: str = ""
    usage: Usage | None = None
    signature: str = ""

    def __post_init__(self):
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind {self.kind!r} is not one of {', '.join(sorted(EVENT_KINDS))}")


class ProtocolError(StatusError):
    """A request or response that a protocol cannot express; status is the HTTP status to use."""

    status = 400


@dataclass(frozen=True)
class Route:
    """One HTTP route a protocol's clients call.

    kind says what it serves: generate | count | models (the list) | model (one entry) |
    unserved (a 404 naming what is served: a method the protocol has but BitRouter does not).
    stream is fixed by the path (Gemini's streamGenerateContent) or None: the body says.
    """

    method: str
    path: str  # a bottle route; its wildcards reach the protocol as path arguments
    kind: str
    stream: bool | None = None


@dataclass(frozen=True, eq=False)
class Protocol:
    """One wire protocol, declared by its module as `PROTOCOL`: everything the rest of BitRouter
    knows about it. Routes, error shapes by path, auth headers and the wizard's key check are
    derived from these declarations; a new protocol is one module that declares one of these
    (tests/ndjson_protocol.py shows a small one) and is registered with `register`.

    Inbound (clients -> BitRouter): model_of(body, path_model) (a route's `<model>` wildcard) and
    wants_stream(body) read a request;
    decode_request -> Request; encode_response(Response, model, request) -> dict;
    StreamEncoder(model, request) with .event(Event) -> bytes, .finish_stream() and
    .error(status, message) (the in-band end of a broken stream); error_body(status, message);
    usage_of / stream_usage / is_final read replies relayed untouched; passthrough_body,
    drop_sealed and relay_frame are the only changes a same-protocol relay makes;
    count_request / count_reply serve count routes, model_list / model_entry model routes.

    Upstream (BitRouter -> providers): request_url(base, model_id, stream), encode_request,
    decode_response, StreamDecoder with .feed(event, data) -> events, error_message(status,
    body); count_url / count_body / counted when the provider has its own token counter.

    framing parses and writes the stream format (`sse`: Parser(max_frame).frames(chunk) ->
    [(raw, event, data)], frame(data, event), CONTENT_TYPE); keepalive is a frame the
    protocol's clients ignore, added to quiet encoded streams (b"" for none).
    """

    name: str
    title: str  # what people choose from (the wizard)
    routes: tuple
    auth: str  # how the protocol's own API takes its key: an AUTH_STYLES name
    framing: object
    model_of: object
    wants_stream: object
    decode_request: object
    encode_response: object
    StreamEncoder: object
    stream_error: object
    error_body: object
    usage_of: object
    stream_usage: object
    is_final: object
    passthrough_body: object
    drop_sealed: object
    relay_frame: object
    request_url: object
    encode_request: object
    decode_response: object
    StreamDecoder: object
    error_message: object
    count_request: object = None
    count_reply: object = None
    count_url: object = None
    count_body: object = None
    counted: object = None
    model_list: object = None
    model_entry: object = None
    models_path: str = ""  # where its API lists models (the wizard's key check), under api_base
    models_list_key: str = "data"  # ... the JSON key holding that list, and the key naming each entry
    models_id_key: str = "id"
    model_field: str = "model"  # where a reply names its model: the client's name is put back
    keepalive: bytes = b""
    # Where conversation text travels (dotted key paths) in "request" bodies, "reply" bodies and
    # "stream" frames: what the guardrails scan; no "stream" entry, no guarded streams.
    text_fields: dict = field(default_factory=dict)
    tool_call_marks: tuple = ()  # byte strings counting tool calls in a raw request body
    fixed_headers: dict = field(default_factory=dict)
    forward_headers: tuple = ()  # client headers a same-protocol relay passes on
    client_prefixes: tuple = ()  # paths only its clients call, besides its routes: errors there take its shape


# How a provider takes its key, by the name `auth:` gives in the configuration.
AUTH_STYLES = {
    "bearer": lambda key: {"authorization": f"Bearer {key}"},
    "x-api-key": lambda key: {"x-api-key": key},
    "x-goog-api-key": lambda key: {"x-goog-api-key": key},
}

# api_protocol name -> module; `openai` is Chat Completions, the module named for its API.
_MODULES = {"openai": "chat", "responses": "responses", "anthropic": "anthropic", "google": "google"}
_REGISTERED = {}


def get(name: str) -> Protocol:
    """The declared protocol an api_protocol name stands for; KeyError for an unknown one."""
    if name not in _REGISTERED:
        _REGISTERED[name] = importlib.import_module(f"bitrouter.protocols.{_MODULES[name]}").PROTOCOL
    return _REGISTERED[name]


def names() -> list[str]:
    """Every api_protocol name, the built-in four first."""
    return [*_MODULES, *(n for n in _REGISTERED if n not in _MODULES)]


def every() -> list[Protocol]:
    """Every protocol, the built-in four first."""
    return [get(name) for name in names()]


def register(protocol: Protocol) -> None:
    """Add a protocol (servers built afterwards serve its routes and may call it upstream)."""
    _REGISTERED[protocol.name] = protocol


def error_message(status: int, body: bytes) -> str:
    """The message in an upstream error body: `{"error": {"message"}}` (OpenAI, Anthropic, Google), else its text."""
    try:
        data = json.loads(body)
        err = (data[0] if isinstance(data, list) and data else data).get("error")
    except (ValueError, AttributeError):
        return body[:300].decode("utf-8", "replace").strip()
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err or body[:300].decode("utf-8", "replace"))


def estimate_tokens(req: Request) -> int:
    """A prompt's size in tokens, estimated without a tokenizer (for the count-tokens endpoints).

    About four characters per token over the text, tool calls, results and tool schemas,
    plus a flat charge per image or file and per message; good for budgeting, not for billing.
    """
    chars = sum(len(p.text) for p in req.system) + len(json.dumps([t.__dict__ for t in req.tools]))
    images = 0
    for msg in req.messages:
        for p in msg.parts:
            inner = p.content if p.kind == "tool_result" else [p]
            chars += sum(len(c.text) + len(c.name) + len(c.arguments) for c in inner)
            images += sum(c.kind in MEDIA for c in inner)
    return -(-chars // 4) + 765 * images + 3 * len(req.messages)


def content_items(content, where: str, what: str) -> list:
    """Message content given as a string or an array, as the array (a string is one text item).

    All translated protocols take `{"type": "text", "text": ...}` items; an empty string or
    None is no content, anything else is a 400 naming `where` and the array it expects (`what`).
    """
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise ProtocolError(f"{where}: must be a string or {what}")
    return content


def media(media_type: str = "", url: str = "", data: str = "", file: bool = False) -> Part:
    """An image or file part: an image/* media type makes an image, any other a file; without
    one, the client's container decides (file=True for a document or file block)."""
    image = media_type.startswith("image/") or not (media_type or file)
    return Part("image" if image else "file", url=url, data=data, media_type=media_type)


def media_part(url: str, default_type: str = "image/png", file: bool = False) -> Part:
    """An image or file from a URL or a base64 data: URL (whose media type decides which it is)."""
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return media(head or default_type, data=data, file=file)
    return media(url=url, file=file)


def type_of(name: str, default: str = "") -> str:
    """The media type a file name or URL's extension says, else default."""
    ext = name.rsplit("?", 1)[0].rsplit(".", 1)[-1].lower() if "." in name else ""
    return _EXTENSION_TYPES.get(ext, default)


def extension_of(media_type: str) -> str:
    """A file name extension for a media type (for APIs that want a file name)."""
    return next((ext for ext, kind in _EXTENSION_TYPES.items() if kind == media_type), "bin")


def data_url(p: Part) -> str:
    """An image or file part as a URL: its own, or its data as a base64 data: URL."""
    return p.url or f"data:{p.media_type or 'image/png'};base64,{p.data}"


def finish_reason(reason: str | None, calls: bool) -> str:
    """The unified finish reason from a decoder's mapping of the provider's (None: unknown).

    A turn that made tool calls and otherwise stopped normally finished for its calls:
    Gemini and Responses never say so, and some Chat providers say `stop`. A Response
    applies this rule when it is built, each stream decoder to its finish event; encoders
    trust the reason they are given.
    """
    if calls and reason in (None, "stop"):
        return "tool_calls"
    return reason or "stop"


def add_system(req: Request, parts: list) -> None:
    """A client's system (or developer) text: before the first turn it joins the instructions,
    later it is a system message that keeps its place (Claude Code and Codex send those)."""
    text = [p for p in parts if p.kind == "text"]
    if req.messages:
        req.messages.append(Message("system", text))
    else:
        req.system += text


def set_given(body: dict, key: str, value) -> None:
    """body[key] = value unless value is None: an option the client left unset stays out of the wire body."""
    if value is not None:
        body[key] = value


def set_options(body: dict, req: Request, names: dict) -> None:
    """The request's options the client gave (not None, not an empty list), under their wire names.

    names maps each wire name to the Request field it carries: the protocol's names as data.
    """
    for wire, name in names.items():
        value = getattr(req, name)
        if value is not None and value != []:
            body[wire] = value


def arguments_object(arguments: str) -> dict:
    """Tool-call arguments (a JSON string) as the object Anthropic and Gemini want; non-objects are wrapped."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


# ---------------------------------------------------------------- reasoning provenance

SEAL_PREFIX = "br1."  # a sealed proof: br1.<base64url of {"p": producer label, "v": native proof}>


def seal(proof: str, producer: str) -> str:
    """A native proof wrapped with the endpoint that produced it, for the client to carry."""
    if not proof:
        return ""
    packed = json.dumps({"p": producer, "v": proof}, separators=(",", ":")).encode()
    return SEAL_PREFIX + base64.urlsafe_b64encode(packed).decode().rstrip("=")


def unseal(value: str) -> tuple[str, str]:
    """(producer, native proof) from a sealed proof; ("", value) for anything else."""
    if not value.startswith(SEAL_PREFIX):
        return "", value
    body = value[len(SEAL_PREFIX):]
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return str(data["p"]), str(data["v"])
    except (ValueError, KeyError, TypeError):  # binascii.Error is a ValueError
        return "", value


def own_proofs(req: Request, producer: str) -> Request:
    """The request as one endpoint may see it: its own proofs unsealed, every other one dropped.

    A proof from another provider or model (or of unknown origin) would be refused, and
    Anthropic refuses signatures from another model outright; the reasoning text stays
    as an unsigned part, which encoders that need a proof leave out.
    """
    def keep(part: Part) -> Part:
        if part.kind != "reasoning" or not part.signature:
            return part
        origin, native = unseal(part.signature)
        return dataclasses.replace(part, signature=native if origin == producer else "")
    if not any(p.kind == "reasoning" and p.signature for m in req.messages for p in m.parts):
        return req
    return dataclasses.replace(req, messages=[Message(m.role, [keep(p) for p in m.parts]) for m in req.messages])


def native_proof(signature: str, kind: str) -> dict | None:
    """An unsealed proof as the dict its producing protocol wrote, if it is one of `kind`."""
    try:
        data = json.loads(signature) if signature.startswith("{") else None
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("kind") == kind else None


def proof(kind: str, **native) -> str:
    """A native proof: what the producing protocol needs to replay its reasoning, as JSON."""
    return json.dumps({"kind": kind, **native}, separators=(",", ":"))


def reply_model(raw: bytes, field_name: str, model: str) -> bytes:
    """A relayed stream frame with its model field set to the client's name.

    Only the key followed by a string value is replaced: inside string values quotes are
    escaped, so text or tool arguments that mention a model are never touched. (Frames
    only: a whole body goes through body_model, as tool inputs in it are objects.)
    """
    return _renamer(field_name, model)(raw)


def body_model(raw: bytes, data: dict, field_name: str, model: str) -> bytes:
    """A whole reply body (raw, parsed as data) with its top-level model field set to the client's name.

    A key that occurs once in a body without \\u escapes is the top-level one (an escaped
    spelling of it is the only other way to write it), so it is replaced in place; any other
    body is re-encoded from its parsed JSON, where tool inputs with such a field are objects.
    """
    if raw.count(b'"' + field_name.encode() + b'"') == 1 and b"\\u" not in raw:
        renamed = reply_model(raw, field_name, model)
        if renamed != raw:  # the key had a string value (it differs from model: a rename is due)
            return renamed
    return json.dumps({**data, field_name: model}).encode()


_EXTENSION_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
                    "webp": "image/webp", "pdf": "application/pdf", "txt": "text/plain", "md": "text/markdown",
                    "csv": "text/csv", "json": "application/json", "html": "text/html"}


@functools.lru_cache(maxsize=64)
def _renamer(field_name: str, model: str):
    """The substitution reply_model makes, built once per field and model (a stream makes it per frame)."""
    named = f'"{field_name}":{json.dumps(model)}'.encode()
    pattern = re.compile(b'"' + field_name.encode() + rb'"\s*:\s*"(?:[^"\\]|\\.)*"')
    return functools.partial(pattern.sub, lambda _: named)
