"""Unified messages in a compact comparable form, for the protocol decoding tests."""

import json


def shape(messages: list) -> list:
    """Unified messages as (role, [compact part]) for comparisons."""
    return [(m.role, [_part(p) for p in m.parts]) for m in messages]


def _part(p) -> tuple:
    if p.kind == "tool_call":
        return ("tool_call", p.id, p.name, json.loads(p.arguments))
    if p.kind == "tool_result":
        return ("tool_result", p.id, p.name, [_part(c) for c in p.content], p.is_error)
    if p.kind in ("image", "file"):
        return (p.kind, p.url or p.data, p.media_type)
    if p.kind == "reasoning":
        return ("reasoning", p.text, p.signature)
    return (p.kind, p.text)
