"""Property-based conversion tests: random valid conversations through every protocol pair.

A request decoded from one protocol, encoded for another and decoded again by that
protocol's own inbound side must keep what both sides can express: the order of the
turns, text and images, every tool call with its arguments, each result paired with the
call it answers (and the very same ids wherever the wire format carries ids). Responses
and stream events make the same trip through each protocol's two halves.
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitrouter.protocols import Event, Message, Part, ProtocolError, Request, Response, Tool, ToolChoice, Usage, get, sse

PROTOCOLS = ("openai", "responses", "anthropic", "google")
WITH_IDS = ("openai", "responses", "anthropic")  # Gemini calls have no mandatory ids
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies

names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
call_ids = st.from_regex(r"call_[A-Za-z0-9]{6,12}", fullmatch=True)
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=24).filter(str.strip)
arguments = st.dictionaries(names, st.one_of(st.integers(-999, 999), st.booleans(), texts), max_size=3)
images = st.builds(lambda data, mt: Part("image", data=data, media_type=mt),
                   st.from_regex(r"[A-Za-z0-9+/]{4,16}", fullmatch=True), st.sampled_from(["image/png", "image/jpeg"]))


@st.composite
def conversations(draw) -> Request:
    """A valid conversation: rounds of user turn, tool rounds (calls then their results), answers."""
    messages, tools, seen = [], {}, set()
    for _ in range(draw(st.integers(1, 3))):
        user = draw(st.lists(st.one_of(texts.map(lambda t: Part("text", text=t)), images), min_size=1, max_size=3))
        messages.append(Message("user", user))
        for _ in range(draw(st.integers(0, 2))):
            parts = []
            if draw(st.booleans()):
                parts.append(Part("reasoning", text=draw(texts)))
            if draw(st.booleans()):
                parts.append(Part("text", text=draw(texts)))
            calls = []
            for _ in range(draw(st.integers(1, 3))):
                call_id = draw(call_ids.filter(lambda c: c not in seen))
                seen.add(call_id)
                name = draw(names)
                tools[name] = Tool(name, draw(texts), {"type": "object", "properties": {"x": {"type": "string"}}})
                calls.append(Part("tool_call", id=call_id, name=name, arguments=json.dumps(draw(arguments))))
            messages.append(Message("assistant", parts + calls))
            messages.append(Message("tool", [Part("tool_result", id=c.id, name=c.name,
                                                  content=[Part("text", text=t) for t in draw(st.lists(texts, min_size=1, max_size=2))])
                                             for c in calls]))
        if draw(st.booleans()):
            messages.append(Message("assistant", [Part("text", text=draw(texts))]))
    system = [Part("text", text=t) for t in draw(st.lists(texts, max_size=2))]
    choice = draw(st.sampled_from([None, ToolChoice("auto"), ToolChoice("none"), ToolChoice("required")]
                                  + ([ToolChoice("required", min(tools))] if tools else [])))
    return Request(model="m", messages=messages, system=system, tools=list(tools.values()), tool_choice=choice,
                   max_tokens=draw(st.one_of(st.none(), st.integers(1, 4096))),
                   temperature=draw(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0]))))


@st.composite
def chat_bodies(draw) -> dict:
    """Chat Completions bodies as clients write them (string or part contents, developer role...)."""
    req = draw(conversations())
    messages = [{"role": draw(st.sampled_from(["system", "developer"])), "content": p.text} for p in req.system]
    for msg in req.messages:
        if msg.role == "user":
            parts = [{"type": "text", "text": p.text} if p.kind == "text" else
                     {"type": "image_url", "image_url": {"url": f"data:{p.media_type};base64,{p.data}"}}
                     for p in msg.parts]
            plain = len(parts) == 1 and parts[0]["type"] == "text" and draw(st.booleans())
            messages.append({"role": "user", "content": parts[0]["text"] if plain else parts})
        elif msg.role == "assistant":
            out = {"role": "assistant", "content": "".join(p.text for p in msg.parts if p.kind == "text") or None}
            calls = [{"id": p.id, "type": "function", "function": {"name": p.name, "arguments": p.arguments}}
                     for p in msg.parts if p.kind == "tool_call"]
            if calls:
                out["tool_calls"] = calls
            messages.append(out)
        else:
            messages += [{"role": "tool", "tool_call_id": p.id, "content": "\n".join(c.text for c in p.content)}
                         for p in msg.parts]
    return {"model": "m", "messages": messages,
            "tools": [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                        "parameters": t.parameters}} for t in req.tools]}


@st.composite
def responses_bodies(draw) -> dict:
    """Responses bodies as Codex writes them: instructions, typed items, replayed output items."""
    req = draw(conversations())
    items = [{"role": "developer", "content": p.text} for p in req.system[1:]]
    for msg in req.messages:
        for p in msg.parts:
            if p.kind == "tool_call":
                items.append({"type": "function_call", "call_id": p.id, "name": p.name, "arguments": p.arguments})
            elif p.kind == "tool_result":
                items.append({"type": "function_call_output", "call_id": p.id,
                              "output": "\n".join(c.text for c in p.content)})
            elif p.kind == "reasoning":
                items.append({"type": "reasoning", "id": "rs_x", "summary": [{"type": "summary_text", "text": p.text}]})
            elif msg.role == "assistant":
                items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": p.text}]})
            else:
                content = {"type": "input_text", "text": p.text} if p.kind == "text" else \
                    {"type": "input_image", "image_url": f"data:{p.media_type};base64,{p.data}"}
                items.append({"role": "user", "content": [content]})
    body = {"model": "m", "input": items, "tools": [{"type": "function", "name": t.name, "description": t.description,
                                                       "parameters": t.parameters} for t in req.tools]}
    if req.system:
        body["instructions"] = req.system[0].text
    return body


# ---------------------------------------------------------------- the invariants


def trace(req: Request) -> list:
    """What every protocol must keep, in order: user-side and assistant-side content.

    Adjacent texts on one side are joined (several protocols merge them), reasoning is
    left out (not every protocol can carry it), and tool-call ids become ordinals, so
    that the trace says which call each result answers whatever the ids are.
    """
    ordinals, out = {}, []
    for msg in req.messages:
        side = "assistant" if msg.role == "assistant" else "user"
        for p in msg.parts:
            if p.kind == "text":
                if out and out[-1][:2] == (side, "text"):
                    out[-1] = (side, "text", out[-1][2] + p.text)
                else:
                    out.append((side, "text", p.text))
            elif p.kind == "image":
                out.append((side, "image", p.data, p.media_type))
            elif p.kind == "tool_call":
                out.append((side, "call", ordinals.setdefault(p.id, len(ordinals)), p.name, json.loads(p.arguments)))
            elif p.kind == "tool_result":
                out.append((side, "result", ordinals.get(p.id, "unpaired:" + p.id),
                            "\n".join(c.text for c in p.content if c.kind == "text")))
    return out


def ids(req: Request) -> list:
    return [p.id for m in req.messages for p in m.parts if p.kind in ("tool_call", "tool_result")]


def through(req: Request, protocol: str) -> Request:
    """Encode for an upstream speaking `protocol`, then read it back as that protocol's server would."""
    mod = get(protocol)
    body = json.loads(json.dumps(mod.encode_request(req, "m")))  # what actually goes on the wire
    body.setdefault("model", "m")
    return mod.decode_request(body)


def assert_kept(before: Request, after: Request, protocol: str) -> None:
    assert trace(after) == trace(before)
    if protocol in WITH_IDS:
        assert ids(after) == ids(before)
    assert "\n\n".join(p.text for p in after.system) == "\n\n".join(p.text for p in before.system)
    assert [t.name for t in after.tools] == [t.name for t in before.tools]
    if before.tools:  # without tools a choice means nothing, and OpenAI rejects one
        assert (after.tool_choice or "auto") == (before.tool_choice or "auto")
    else:
        assert after.tool_choice in (None, "auto")
    assert after.temperature == before.temperature
    if before.max_tokens:  # without one, some protocols must fill in a default
        assert after.max_tokens == before.max_tokens


# ---------------------------------------------------------------- requests


@pytest.mark.parametrize("protocol", PROTOCOLS)
@SETTINGS
@given(req=conversations())
def test_unified_requests_survive_every_protocol(protocol, req):
    assert_kept(req, through(req, protocol), protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@SETTINGS
@given(body=chat_bodies())
def test_chat_bodies_survive_every_protocol(protocol, body):
    req = get("openai").decode_request(body)
    assert [(m["role"], m.get("tool_call_id")) for m in body["messages"] if m["role"] == "tool"] == \
        [("tool", p.id) for m in req.messages for p in m.parts if p.kind == "tool_result"]
    assert_kept(req, through(req, protocol), protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@SETTINGS
@given(body=responses_bodies())
def test_responses_bodies_survive_every_protocol(protocol, body):
    req = get("responses").decode_request(body)
    item_ids = [i["call_id"] for i in body["input"] if i.get("type") in ("function_call", "function_call_output")]
    assert ids(req) == item_ids  # decoding keeps item order and ids
    assert all(m.role != req.messages[i + 1].role or m.role == "user" for i, m in enumerate(req.messages[:-1]))
    assert_kept(req, through(req, protocol), protocol)


# ---------------------------------------------------------------- responses and streams

# Usage fields each protocol can express (the rest is lost on the wire, by design).
USAGE_FIELDS = {"openai": ("input", "output", "cache_read", "reasoning"),
                "responses": ("input", "output", "cache_read", "cache_write", "reasoning"),
                "anthropic": ("input", "output", "cache_read", "cache_write", "reasoning"),
                "google": ("input", "output", "cache_read", "reasoning")}


@st.composite
def usages(draw) -> Usage:
    read, write, reasoning = draw(st.integers(0, 500)), draw(st.integers(0, 500)), draw(st.integers(0, 500))
    return Usage(input=read + write + draw(st.integers(0, 5000)), output=reasoning + draw(st.integers(1, 5000)),
                 cache_read=read, cache_write=write, reasoning=reasoning)


@st.composite
def answers(draw) -> Response:
    parts = []
    if draw(st.booleans()):
        parts.append(Part("text", text=draw(texts)))
    calls = draw(st.lists(st.tuples(call_ids, names, arguments), max_size=3, unique_by=lambda c: c[0]))
    parts += [Part("tool_call", id=i, name=n, arguments=json.dumps(a)) for i, n, a in calls]
    parts = parts or [Part("text", text=draw(texts))]
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length", "content_filter"]))
    return Response(id="r1", model="m", parts=parts, finish_reason=finish, usage=draw(usages()))


def outcome(parts) -> list:
    return [("text", p.text) if p.kind == "text" else ("call", p.id, p.name, json.loads(p.arguments))
            for p in parts if p.kind in ("text", "tool_call")]


def kept_usage(u: Usage, protocol: str) -> dict:
    return {f: getattr(u, f) for f in USAGE_FIELDS[protocol]}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@SETTINGS
@given(resp=answers())
def test_responses_survive_each_protocol(protocol, resp):
    mod = get(protocol)
    back = mod.decode_response(json.loads(json.dumps(mod.encode_response(resp, "m"))))
    expected = outcome(resp.parts)
    if protocol not in WITH_IDS:
        expected = [e if e[0] == "text" else (e[0], "", *e[2:]) for e in expected]
        got = [g if g[0] == "text" else (g[0], "", *g[2:]) for g in outcome(back.parts)]
    else:
        got = outcome(back.parts)
    assert got == expected
    assert back.finish_reason == resp.finish_reason
    assert kept_usage(back.usage, protocol) == kept_usage(resp.usage, protocol)


@st.composite
def event_streams(draw) -> list:
    """A model's answer as unified events: start, reasoning, text, calls with argument pieces, end."""
    events = [Event("start", id="s1", model="m")]
    events += [Event("reasoning", text=t) for t in draw(st.lists(texts, max_size=2))]
    events += [Event("text", text=t) for t in draw(st.lists(texts, max_size=3))]
    calls = draw(st.lists(st.tuples(call_ids, names, arguments), max_size=3, unique_by=lambda c: c[0]))
    for index, (call_id, name, args) in enumerate(calls):
        events.append(Event("tool_call", index=index, id=call_id, name=name))
        encoded = json.dumps(args)
        cut = draw(st.integers(0, len(encoded)))
        events += [Event("tool_args", index=index, text=piece) for piece in (encoded[:cut], encoded[cut:]) if piece]
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length"]))
    return events + [Event("finish", reason=finish), Event("usage", usage=draw(usages()))]


def summary(events) -> dict:
    calls, args = [], {}
    for ev in events:
        if ev.kind == "tool_call":
            calls.append((ev.index, ev.id, ev.name))
            args.setdefault(ev.index, "")
        elif ev.kind == "tool_args":
            args[ev.index] = args.get(ev.index, "") + ev.text
    return {"text": "".join(e.text for e in events if e.kind == "text"),
            "calls": [(i, n, json.loads(args[x] or "{}")) for x, i, n in calls],
            "finish": [e.reason for e in events if e.kind == "finish"],
            "usage": [e.usage for e in events if e.kind == "usage"][-1:]}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@SETTINGS
@given(events=event_streams())
def test_streams_survive_each_protocol(protocol, events):
    mod = get(protocol)
    encoder = mod.StreamEncoder("m", Request(model="m", messages=[], include_usage=True, stream=True))
    wire = b"".join(encoder.event(ev) for ev in events) + encoder.finish_stream()
    parser, decoder = sse.Parser(), mod.StreamDecoder()
    back = [ev for name, data in parser.feed(wire) + parser.close() for ev in decoder.feed(name, data)]
    want, got = summary(events), summary(back)
    if protocol not in WITH_IDS:
        want["calls"] = [("", n, a) for _, n, a in want["calls"]]
        got["calls"] = [("", n, a) for _, n, a in got["calls"]]
    assert (got["text"], got["calls"], got["finish"]) == (want["text"], want["calls"], want["finish"])
    assert [kept_usage(u, protocol) for u in got["usage"]] == [kept_usage(u, protocol) for u in want["usage"]]


def test_untranslatable_content_is_a_400_not_a_crash():
    """Requests a target cannot express fail as ProtocolError 400, never as another exception."""
    odd = Request(model="m", messages=[Message("user", [Part("image", url="https://example.com/cat.png")])])
    for protocol in PROTOCOLS:
        try:
            through(odd, protocol)
        except ProtocolError as exc:
            assert exc.status == 400
