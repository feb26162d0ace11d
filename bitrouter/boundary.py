"""The boundary: one set of checks for what enters BitRouter, one redaction for what leaves.

Everything that comes in from a client or an upstream (JSON bodies, header values, model
and route names) is checked here, so a hostile value is a clear 400 (or an upstream
failure) before any code that trusts its shape runs. Everything that goes out (client
errors, streams, logs, metrics, events) passes through `redact`, so no configured key
leaves the process, whatever its length.
"""

import dataclasses
import functools
import json
import math
import re
import typing

from bitrouter import StatusError
from bitrouter.guardrails import SHORT_SECRET, secret_pattern

MAX_DEPTH = 64  # JSON nesting accepted from clients and upstreams (real requests use under 20)
MAX_NAME = 256  # characters in a model or route name
# Model and route names: what provider ids and aliases use (`openrouter:anthropic/claude-3.5`,
# `ollama:qwen2.5:7b`, `vertex:claude@20240620`), and nothing that could end a header, a
# URL path segment or a log field.
NAME = re.compile(r"[A-Za-z0-9._:/@+~\[\]-]+")
# Header values: visible ASCII, spaces and tabs (RFC 9110 field-vchar without obs-text).
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
SCALARS = (str, int, float, bool, type(None))  # field types with nothing nested in them


class Invalid(StatusError, ValueError):
    """Input that fails a boundary check (a 400); the message says what is wrong with it."""

    status = 400


def load_json(data: bytes, what: str = "request body"):
    """Parse JSON within the depth limit; NaN, Infinity and numbers beyond a double are refused."""
    try:
        if not isinstance(data, str):
            data = data.decode(json.detect_encoding(data), "surrogatepass")  # as json.loads does
        value = _DECODER.decode(data)
    except RecursionError:
        raise Invalid(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise Invalid(f"{what} is not valid UTF-8") from None
    except Invalid:
        raise
    except ValueError as exc:
        raise Invalid(f"{what} is not valid JSON: {exc}") from None
    if _openings(data) > MAX_DEPTH and _depth(value) > MAX_DEPTH:  # fewer brackets cannot nest deeper
        raise Invalid(f"{what} is nested deeper than {MAX_DEPTH} levels")
    return value


def check_name(name, what: str = "model") -> str:
    """A model or route name, or Invalid: a string of NAME characters, at most MAX_NAME long."""
    if not isinstance(name, str) or not name:
        raise Invalid(f"{what} must be a non-empty string")
    if len(name) > MAX_NAME:
        raise Invalid(f"{what} is longer than {MAX_NAME} characters")
    if not NAME.fullmatch(name):
        raise Invalid(f"{what} {name[:80]!r} has characters outside letters, digits and . _ - : / @ + ~ [ ]")
    return name


def check_fields(value, where: str = "request"):
    """value (a unified-model dataclass, as decoded from a client) with every field of its declared type.

    Decoders copy client values into the unified model; this is where a `text: true` or a
    `budget_tokens: "x"` is refused, instead of breaking an encoder later.
    """
    stack = [(value, where)]
    while stack:
        node, path = stack.pop()
        for name, kind, scalar in _field_types(type(node)):
            item = getattr(node, name)
            if isinstance(kind, frozenset):  # a Literal: one of a closed set of strings
                if not (isinstance(item, str) and item in kind):
                    raise Invalid(f"{path}.{name} is not one of {', '.join(sorted(kind))}")
            elif kind is not object and not isinstance(item, kind):
                raise Invalid(f"{path}.{name} has the wrong type ({type(item).__name__})")
            if scalar:
                continue
            if dataclasses.is_dataclass(item):  # reasoning, response_format, tool_choice, usage
                stack.append((item, f"{path}.{name}"))
            elif isinstance(item, list):
                for i, child in enumerate(item):
                    if dataclasses.is_dataclass(child):
                        stack.append((child, f"{path}.{name}[{i}]"))
                    elif not isinstance(child, str):
                        raise Invalid(f"{path}.{name}[{i}] has the wrong type ({type(child).__name__})")
    return value


@functools.cache
def _field_types(cls) -> tuple:
    """(field name, the type isinstance checks its value against, or a Literal's values, whether
    that type is scalar: nothing nested to check) for a unified-model dataclass.

    Resolving the annotations costs far more than checking the values: it is done once per class.
    """
    hints = typing.get_type_hints(cls)
    found = []
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if typing.get_origin(kind) is typing.Literal:
            kind = frozenset(typing.get_args(kind))
        if kind is float or kind == float | None:  # a JSON 1 is a fine temperature
            kind = kind | int
        scalar = isinstance(kind, frozenset) or all(t in SCALARS for t in typing.get_args(kind) or (kind,))
        found.append((field.name, kind, scalar))
    return tuple(found)


def check_headers(environ: dict) -> None:
    """Invalid if any request header value has a control character or a non-ASCII byte.

    Such a value is never forwarded upstream, and never reaches code that decodes headers.
    """
    values = "".join([value for value in environ.values() if value.__class__ is str])
    if values.isascii() and values.isprintable():
        return  # the usual request, decided in one pass (isprintable leaves out \t: the loop decides)
    for key, value in environ.items():
        if value.__class__ is str and value.isascii() and value.isprintable():
            continue  # the usual value, decided without a regex (isprintable leaves out \t: the regex decides)
        if (key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")) \
                and not HEADER_VALUE.fullmatch(value):
            name = key.removeprefix("HTTP_").replace("_", "-").lower()
            raise Invalid(f"header {name!r} has a control character or a non-ASCII byte")


def mask(secret: str) -> str:
    """Show just enough of a secret to recognise it: `sk-a...wxyz`; `***` for one of 12 characters or fewer.

    The one masked form of a key: `status`, `doctor`, the wizard and `redact` all show this.
    """
    if not secret:
        return ""
    return secret[:4] + "..." + secret[-4:] if len(secret) > 12 else "***"


def redact(text, secrets):
    """text (str or bytes) with every secret in `secrets` replaced by its masked form.

    A key shorter than SHORT_SECRET is masked where it stands as a whole token: a key
    `k` is still never shown, but the k in every other word stays.
    """
    binary = isinstance(text, (bytes, bytearray))
    for secret in secrets:
        needle = secret.encode() if binary else secret
        if needle in text:
            masked = mask(secret)
            masked = masked.encode() if binary else masked
            if len(secret) >= SHORT_SECRET:
                text = text.replace(needle, masked)
            else:
                text = _token_pattern(secret, binary).sub(lambda _: masked, text)
    return text


@functools.lru_cache(maxsize=256)
def _token_pattern(secret: str, binary: bool):
    pattern = secret_pattern(secret)
    return re.compile(pattern.encode() if binary else pattern)


def secrets_of(cfg) -> list:
    """Every key in the configuration, longest first (so a key's prefix never half-masks it)."""
    keys = {p.api_key for p in cfg.providers.values() if p.api_key}
    keys.update(e.api_key for a in cfg.models.values() for e in a.endpoints if e.api_key)
    return sorted(keys, key=len, reverse=True)


# ---------------------------------------------------------------- helpers


def _no_constant(name: str):
    raise Invalid(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Invalid(f"number {text[:40]} is out of range")
    return value


def _openings(data) -> int:
    """How many `{` and `[` a JSON text has (strings included): a bound on its nesting depth."""
    if isinstance(data, str):
        return data.count("{") + data.count("[")
    return data.count(b"{") + data.count(b"[")


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)  # built once, not per body


def _depth(value) -> int:
    """The nesting depth of parsed JSON (at most MAX_DEPTH + 1), level by level, without recursion."""
    level, depth = [value], 0
    while level and depth <= MAX_DEPTH:
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node) if isinstance(child, (dict, list))]
        depth += 1
    return depth + bool(level)
