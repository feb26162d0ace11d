"""Wire protocols and the unified model they translate through.

Each protocol module (openai = Chat Completions, responses, anthropic, google) speaks one
wire format in both directions; mock is the in-process provider instead (generate, stream):

  inbound  (client -> BitRouter): NAME, model_of, wants_stream, decode_request,
           encode_response, StreamEncoder (.event, .finish_stream, and .error when ending a
           broken stream needs the stream's state), stream_error,
           error_body, usage_of, stream_usage, is_final, passthrough_body
  upstream (BitRouter -> provider): FIXED_HEADERS, FORWARD_HEADERS, request_url,
           encode_request, decode_response, StreamDecoder, error_message

Same-protocol traffic never touches the unified model: the body is forwarded with only
`model` rewritten and the upstream's SSE frames are relayed as they arrive.
"""

import importlib
import json
from dataclasses import dataclass, field


@dataclass
class Part:
    """One piece of message content.

    kind is text | image | tool_call | tool_result | reasoning:
      text: text;  image: url or data + media_type;  reasoning: text (+ signature)
      tool_call: id, name, arguments (a JSON string)
      tool_result: id, name, content (list of text/image Parts), is_error
    """

    kind: str
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


@dataclass
class Message:
    """A turn in the conversation: role is user | assistant | tool."""

    role: str
    parts: list


@dataclass
class Tool:
    """A function the model may call; parameters is a JSON schema."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=dict)


@dataclass
class Request:
    """A generation request in protocol-neutral form.

    tool_choice: None | "auto" | "none" | "required" | {"name": ...}
    response_format: None | {"type": "json_object"} | {"type": "json_schema", "name", "schema", "strict"}
    reasoning: None | {"effort": "low|medium|high"} and/or {"budget_tokens": N}
    """

    model: str
    messages: list
    system: list = field(default_factory=list)  # text Parts, in order
    tools: list = field(default_factory=list)
    tool_choice: object = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list = field(default_factory=list)
    response_format: dict | None = None
    reasoning: dict | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None


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

    finish_reason is stop | length | tool_calls | content_filter | error (as is a finish Event's reason).
    """

    id: str
    model: str
    parts: list
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)


@dataclass
class Event:
    """One unified stream event.

    kind: start | text | reasoning | tool_call | tool_args | finish | usage
      text: text;  reasoning: text and/or signature (the provider's proof of its thinking)
      tool_call: index, id, name;  tool_args: index, text
      finish: reason;  usage: usage;  start: id, model
    """

    kind: str
    text: str = ""
    index: int = 0
    id: str = ""
    name: str = ""
    reason: str = ""
    model: str = ""
    usage: Usage | None = None
    signature: str = ""


class ProtocolError(Exception):
    """A request or response that a protocol cannot express; status is the HTTP status to use."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def get(name: str):
    """The module implementing one wire protocol."""
    return importlib.import_module(f"bitrouter.protocols.{name}")


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
    plus a flat charge per image and per message; good for budgeting, not for billing.
    """
    chars = sum(len(p.text) for p in req.system) + len(json.dumps([t.__dict__ for t in req.tools]))
    images = 0
    for msg in req.messages:
        for p in msg.parts:
            inner = p.content if p.kind == "tool_result" else [p]
            chars += sum(len(c.text) + len(c.name) + len(c.arguments) for c in inner)
            images += sum(c.kind == "image" for c in inner)
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


def media_part(url: str, default_type: str = "image/png") -> Part:
    """An image or file from a URL or a base64 data: URL (unified `image` parts carry any media type)."""
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return Part("image", data=data, media_type=head or default_type)
    return Part("image", url=url)


def set_given(body: dict, key: str, value) -> None:
    """body[key] = value unless value is None: an option the client left unset stays out of the wire body."""
    if value is not None:
        body[key] = value


def arguments_object(arguments: str) -> dict:
    """Tool-call arguments (a JSON string) as the object Anthropic and Gemini want; non-objects are wrapped."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def effort_for_budget(budget) -> str:
    """A thinking budget in tokens as the nearest OpenAI reasoning effort."""
    return "low" if (budget or 0) < 4096 else "medium" if budget < 16384 else "high"
