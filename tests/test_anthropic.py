"""Anthropic Messages: the mapping rules (table-driven) and the endpoint through a real server."""

import json
import threading

import anthropic
import pytest
import requests

from bitrouter.protocols import (Event, Message, Part, ProtocolError, Reasoning, Request, Response, ResponseFormat, Tool,
                                 ToolChoice, Usage, proof, sse)
from bitrouter.protocols import anthropic as proto
from conftest import ServerProcess, wait_until
from fakes import (ANTHROPIC_USAGE, TOOL_ARGS, FakeUpstream, Fleet, Reply, anthropic_error, anthropic_frames,
                   anthropic_message, anthropic_upstream, chat_completion, chat_stream, error, gemini_upstream,
                   protocol_config)
from shapes import shape

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PNG = "iVBORw0KGgo="


def decode(**body):
    return proto.decode_request({"model": "m", "max_tokens": 100, "messages": [], **body})


def user(*content):
    return {"role": "user", "content": list(content)}


def assistant(*content):
    return {"role": "assistant", "content": list(content)}


# ---------------------------------------------------------------- inbound: request decoding

DECODE_CASES = {
    "string content is one text part; assistant turns stay assistant turns": (
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
         {"role": "user", "content": "again"}],
        [("user", [("text", "hi")]), ("assistant", [("text", "hello")]), ("user", [("text", "again")])]),
    "images as base64 and as URL": (
        [user({"type": "text", "text": "look"},
              {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}},
              {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}})],
        [("user", [("text", "look"), ("image", PNG, "image/jpeg"), ("image", "https://x/cat.png", "")])]),
    "documents: base64 PDF as a file part, text source as text": (
        [user({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
              {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain"}})],
        [("user", [("file", "JVBE", "application/pdf"), ("text", "plain")])]),
    "parallel tool calls, then results (error, several parts) named after their calls, then text": (
        [user({"type": "text", "text": "weather?"}),
         assistant({"type": "thinking", "thinking": "hmm", "signature": "sig"},
                   {"type": "text", "text": "checking"},
                   {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                   {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}),
         user({"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
              {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
               "content": [{"type": "text", "text": "no clock"},
                           {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                        "data": PNG}}]},
              {"type": "text", "text": "thanks"})],
        [("user", [("text", "weather?")]),
         ("assistant", [("reasoning", "hmm", "sig"), ("text", "checking"),
                        ("tool_call", "toolu_1", "get_weather", {"city": "Paris"}),
                        ("tool_call", "toolu_2", "get_time", {})]),
         ("tool", [("tool_result", "toolu_1", "get_weather", [("text", "18C")], False),
                   ("tool_result", "toolu_2", "get_time", [("text", "no clock"), ("image", PNG, "image/png")],
                    True)]),
         ("user", [("text", "thanks")])]),
    "server tool blocks are left out; redacted thinking is reasoning that carries its data": (
        [assistant({"type": "redacted_thinking", "data": "enc"},
                   {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
                   {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                   {"type": "text", "text": "found"})],
        [("assistant", [("reasoning", "", "enc"), ("text", "found")])]),
    "mid-conversation system messages keep their place": (
        [{"role": "user", "content": "hi"}, {"role": "system", "content": "be brief"},
         {"role": "assistant", "content": "ok"},
         {"role": "system", "content": [{"type": "text", "text": "now"}, {"type": "text", "text": "metric"}]}],
        [("user", [("text", "hi")]), ("system", [("text", "be brief")]), ("assistant", [("text", "ok")]),
         ("system", [("text", "now"), ("text", "metric")])]),
}


@pytest.mark.parametrize("messages,expected", DECODE_CASES.values(), ids=DECODE_CASES.keys())
def test_decode_messages(messages, expected):
    assert shape(decode(messages=messages).messages) == expected


@pytest.mark.parametrize("system,expected", [
    ("be brief", ["be brief"]),
    ([{"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "two"}],
     ["one", "two"]),
    (None, []),
])
def test_system_as_string_or_blocks(system, expected):
    assert [p.text for p in decode(system=system).system] == expected


def test_leading_system_messages_join_the_system_prompt():
    req = decode(system="top", messages=[{"role": "system", "content": "first"}, {"role": "user", "content": "hi"}])
    assert [p.text for p in req.system] == ["top", "first"]
    assert shape(req.messages) == [("user", [("text", "hi")])]


@pytest.mark.parametrize("choice,expected,parallel", [
    ({"type": "auto"}, ToolChoice("auto"), None),
    ({"type": "any"}, ToolChoice("required"), None),
    ({"type": "none"}, ToolChoice("none"), None),
    ({"type": "tool", "name": "get_weather"}, ToolChoice("required", "get_weather"), None),
    ({"type": "auto", "disable_parallel_tool_use": True}, ToolChoice("auto"), False),
    (None, None, None),
])
def test_tool_choice_in(choice, expected, parallel):
    req = decode(tools=[{"name": "get_weather", "input_schema": WEATHER}], tool_choice=choice)
    assert (req.tool_choice, req.parallel_tool_calls) == (expected, parallel)


def test_tools_sampling_thinking_and_format_in():
    req = decode(tools=[{"name": "get_weather", "description": "d", "input_schema": WEATHER},
                        {"type": "web_search_20250305", "name": "web_search"}],
                 temperature=0.3, top_p=0.9, top_k=5, stop_sequences=["END"], metadata={"user_id": "u1"},
                 thinking={"type": "enabled", "budget_tokens": 2000},
                 output_config={"format": {"type": "json_schema", "schema": WEATHER}})
    assert req.tools == [Tool("get_weather", "d", WEATHER)]  # the server tool runs inside Anthropic only
    assert req.dropped == ["web_search_20250305"]  # and is named as left out
    assert req.cache_key is None  # a plain user id keys no cache
    claude_code = decode(metadata={"user_id": json.dumps({"device_id": "d", "session_id": "sess-1"})})
    assert claude_code.cache_key == "sess-1"
    assert (req.max_tokens, req.temperature, req.top_p, req.top_k, req.stop, req.user) == \
        (100, 0.3, 0.9, 5, ["END"], "u1")
    assert req.reasoning == Reasoning(budget_tokens=2000)
    assert req.response_format == ResponseFormat("json_schema", "response", WEATHER, strict=True)
    assert decode(thinking={"type": "adaptive"}, output_config={"effort": "max"}).reasoning == Reasoning("high")
    assert decode(thinking={"type": "disabled"}).reasoning is None


@pytest.mark.parametrize("body,message", [
    ({"model": "m", "max_tokens": 1}, "messages"),
    ({"messages": [], "max_tokens": 1}, "model"),
])
def test_missing_fields_are_400(body, message):
    with pytest.raises(ProtocolError) as exc:
        proto.model_of(body)
    assert message in str(exc.value) and exc.value.status == 400


@pytest.mark.parametrize("messages", [
    [{"role": "developer", "content": "x"}],
    [user({"type": "video", "data": "x"})],
    [user({"type": "image", "source": {"type": "file", "file_id": "file_1"}})],
    [{"role": "user", "content": 5}],
])
def test_undecodable_requests_are_400(messages):
    with pytest.raises(ProtocolError) as exc:
        decode(messages=messages)
    assert exc.value.status == 400


def test_system_of_another_type_is_a_400():
    with pytest.raises(ProtocolError) as exc:
        decode(system=5)
    assert exc.value.status == 400 and "system: must be a string or an array of text blocks" in str(exc.value)


# ---------------------------------------------------------------- upstream: request encoding


def unified(*messages, **fields):
    return Request(model="m", messages=list(messages), **fields)


def test_encode_turns_merge_with_tool_results_first_and_ids_kept():
    req = unified(
        Message("user", [Part("text", text="weather?"), Part("image", url="https://x/a.png")]),
        Message("assistant", [Part("reasoning", text="unsigned"),
                              Part("reasoning", text="gemini's", signature=proof("google", signature="g")),
                              Part("reasoning", text="signed", signature=proof(
                                  "anthropic", block={"type": "thinking", "thinking": "signed", "signature": "s"})),
                              Part("text", text=""), Part("tool_call", id="call_1", name="get_weather",
                                                           arguments='{"city":"Paris"}'),
                              Part("tool_call", id="functions.get_time:1", name="get_time", arguments="")]),
        Message("tool", [Part("tool_result", id="call_1", content=[Part("text", text="18C")])]),
        Message("user", [Part("text", text="and?")]),
        Message("tool", [Part("tool_result", id="functions.get_time:1", is_error=True,
                              content=[Part("text", text="no"), Part("image", data=PNG, media_type="image/png")])]),
        system=[Part("text", text="one"), Part("text", text="two")])
    body = proto.encode_request(req, "claude-x")
    assert body["system"] == [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather?"},
                                     {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "signed", "signature": "s"},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "functions_get_time_1", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "18C"}]},
            {"type": "tool_result", "tool_use_id": "functions_get_time_1", "is_error": True,
             "content": [{"type": "text", "text": "no"},
                         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"type": "text", "text": "and?"}]}]


def test_encode_mid_conversation_system_message_as_user_text_in_place():
    req = unified(Message("user", [Part("text", text="hi")]), Message("assistant", [Part("text", text="ok")]),
                  Message("system", [Part("text", text="be brief")]), Message("user", [Part("text", text="go")]))
    assert proto.encode_request(req, "m")["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "text", "text": "System: be brief"}, {"type": "text", "text": "go"}]}]


REDACTED = {"type": "redacted_thinking", "data": "enc"}


@pytest.mark.parametrize("opening,thinking", [
    ([Part("reasoning", text="plan", signature=proof(
        "anthropic", block={"type": "thinking", "thinking": "plan", "signature": "s"}))], True),
    ([Part("reasoning", signature=proof("anthropic", block=REDACTED))], True),
    ([Part("reasoning", text="plan", signature=proof("responses", item={"type": "reasoning"}))], False),
    ([Part("reasoning", text="plan")], False),
    ([], False),
], ids=["own thinking", "own redacted thinking", "foreign proof", "unsigned", "no reasoning"])
def test_thinking_stays_off_when_a_tool_use_turn_does_not_open_with_its_own_thinking(opening, thinking):
    req = unified(Message("user", [Part("text", text="go")]),
                  Message("assistant", opening + [Part("tool_call", id="toolu_1", name="f", arguments="{}")]),
                  Message("tool", [Part("tool_result", id="toolu_1", content=[Part("text", text="done")])]),
                  max_tokens=20000, temperature=0.2, reasoning=Reasoning("medium"))
    body = proto.encode_request(req, "claude-sonnet-4-5")
    if thinking:
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192} and "temperature" not in body
        assert body["messages"][1]["content"][0] == json.loads(opening[0].signature)["block"]
    else:
        assert "thinking" not in body and body["temperature"] == 0.2
        assert [b["type"] for b in body["messages"][1]["content"]] == ["tool_use"]


@pytest.mark.parametrize("part,block", [
    (Part("file", data="JVBE", media_type="application/pdf"),
     {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}),
    (Part("image", data=PNG), {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}),
    (Part("file", url="https://x/r.pdf", media_type="application/pdf"),
     {"type": "document", "source": {"type": "url", "url": "https://x/r.pdf"}}),
    (Part("file", url="https://x/report"), {"type": "document", "source": {"type": "url", "url": "https://x/report"}}),
    (Part("file", data="SGk=", media_type="text/plain"),
     {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Hi"}}),
])
def test_encode_media(part, block):
    body = proto.encode_request(unified(Message("user", [part])), "m")
    assert body["messages"][0]["content"] == [block]


def test_encode_refuses_media_anthropic_cannot_take():
    with pytest.raises(ProtocolError) as exc:
        proto.encode_request(unified(Message("user", [Part("file", data="x", media_type="audio/wav")])), "m")
    assert exc.value.status == 400 and "audio/wav" in str(exc.value)
    with pytest.raises(ProtocolError, match="base64 of UTF-8 text"):
        proto.encode_request(unified(Message("user", [Part("file", data="/w==", media_type="text/plain")])), "m")


@pytest.mark.parametrize("choice,parallel,expected", [
    (ToolChoice("auto"), None, {"type": "auto"}),
    (ToolChoice("required"), None, {"type": "any"}),
    (ToolChoice("none"), None, {"type": "none"}),
    (ToolChoice("required", "get_weather"), None, {"type": "tool", "name": "get_weather"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    (None, None, None),
])
def test_tool_choice_out(choice, parallel, expected):
    req = unified(Message("user", [Part("text", text="x")]), tools=[Tool("get_weather", "d", WEATHER)],
                  tool_choice=choice, parallel_tool_calls=parallel)
    body = proto.encode_request(req, "m")
    assert body["tools"] == [{"name": "get_weather", "description": "d", "input_schema": WEATHER}]
    assert body.get("tool_choice") == expected


@pytest.mark.parametrize("fields,expected", [
    ({}, {"max_tokens": 64000}),  # the catalog's max_output for the model
    ({"max_tokens": 50, "temperature": 1.7, "top_p": 0.5, "top_k": 3, "stop": ["X"], "user": "u"},
     {"max_tokens": 50, "temperature": 1.0, "top_p": 0.5, "top_k": 3, "stop_sequences": ["X"],
      "metadata": {"user_id": "u"}}),
    ({"max_tokens": 20000, "temperature": 0.2, "reasoning": Reasoning("medium")},
     {"max_tokens": 20000, "thinking": {"type": "enabled", "budget_tokens": 8192}}),  # no temperature then
    ({"max_tokens": 4000, "reasoning": Reasoning(budget_tokens=9000)},
     {"max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 3999}}),
    ({"max_tokens": 1000, "reasoning": Reasoning("high")}, {"max_tokens": 1000}),
    ({"max_tokens": 9000, "reasoning": Reasoning("high"), "tool_choice": ToolChoice("required"), "tools": [Tool("t")]},
     {"max_tokens": 9000}),
    ({"response_format": ResponseFormat("json_schema", schema=WEATHER)},
     {"max_tokens": 64000, "output_config": {"format": {"type": "json_schema", "schema": WEATHER}}}),
    ({"response_format": ResponseFormat("json_object"), "stream": True}, {"max_tokens": 64000, "stream": True}),
])
def test_encode_parameters(fields, expected):
    body = proto.encode_request(unified(Message("user", [Part("text", text="x")]), **fields), "claude-sonnet-4-5")
    got = {k: v for k, v in body.items() if k not in ("model", "messages", "tools", "tool_choice")}
    assert got == expected


def test_max_tokens_default_without_a_catalog_entry():
    assert proto.encode_request(unified(), "unheard-of-model")["max_tokens"] == proto.DEFAULT_MAX_TOKENS


# ---------------------------------------------------------------- responses both ways

STOP_REASONS = [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
                ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
                ("model_context_window_exceeded", "length")]


@pytest.mark.parametrize("anthropic_reason,unified_reason", STOP_REASONS)
def test_stop_reason_in(anthropic_reason, unified_reason):
    assert proto.decode_response(anthropic_message(stop_reason=anthropic_reason)).finish_reason == unified_reason


@pytest.mark.parametrize("unified_reason,anthropic_reason", [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal"),
    ("error", "end_turn")])
def test_stop_reason_out(unified_reason, anthropic_reason):
    resp = Response(id="x", model="m", parts=[Part("text", text="t")], finish_reason=unified_reason)
    assert proto.encode_response(resp, "m")["stop_reason"] == anthropic_reason


def test_decode_response_keeps_every_block_and_counts_cache_in_input():
    body = anthropic_message("answer", calls=[("toolu_1", "get_weather", TOOL_ARGS), ("toolu_2", "get_time", {})],
                             thinking="mull")
    resp = proto.decode_response(body)
    assert [(p.kind, p.text or p.id, p.signature) for p in resp.parts] == [
        ("reasoning", "mull", proof("anthropic", block={"type": "thinking", "thinking": "mull",
                                                         "signature": "sig-fake"})),
        ("text", "answer", ""), ("tool_call", "toolu_1", ""), ("tool_call", "toolu_2", "")]
    assert json.loads(resp.parts[2].arguments) == TOOL_ARGS
    assert resp.usage == Usage(input=35, output=7, cache_read=20, cache_write=5, reasoning=3)
    assert resp.finish_reason == "tool_calls"


def test_decode_response_keeps_redacted_thinking_as_its_native_proof():
    body = {**anthropic_message("answer"), "content": [dict(REDACTED), {"type": "text", "text": "answer"}]}
    assert [(p.kind, p.text, p.signature) for p in proto.decode_response(body).parts] == [
        ("reasoning", "", proof("anthropic", block=REDACTED)), ("text", "answer", "")]


def test_encode_response_blocks_and_usage():
    resp = Response(id="chatcmpl-1", model="gpt", finish_reason="stop", parts=[
        Part("reasoning", text="r"), Part("text", text="t"),
        Part("tool_call", id="call.1", name="f", arguments='{"a": 1}'), Part("tool_call", id="", name="g",
                                                                          arguments="[1]")],
        usage=Usage(input=35, output=7, cache_read=20, cache_write=5, reasoning=3))
    body = proto.encode_response(resp, "alias")
    # the model the client asked for, never the upstream's name for it
    assert body["id"].startswith("msg_") and body["model"] == "alias" and body["stop_reason"] == "tool_use"
    content = body["content"]
    assert content[:3] == [{"type": "thinking", "thinking": "r", "signature": ""}, {"type": "text", "text": "t"},
                           {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}]
    assert content[3]["id"].startswith("toolu_") and content[3]["input"] == {"arguments": [1]}
    assert body["usage"] == {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 20,
                             "cache_creation_input_tokens": 5, "output_tokens_details": {"thinking_tokens": 3}}


# ---------------------------------------------------------------- streams both ways


def frames_of(data: bytes) -> list:
    parser = sse.Parser()
    return [(event, json.loads(body)) for event, body in parser.feed(data)]


def test_stream_encoder_opens_and_closes_indexed_blocks():
    enc = proto.StreamEncoder("alias", unified())
    events = [Event("start", id="chatcmpl-1", model="gpt"), Event("reasoning", text="r"), Event("text", text="a"),
              Event("text", text="b"), Event("tool_call", index=0, id="call_1", name="f"),
              Event("tool_args", index=0, text='{"a"'), Event("tool_call", index=1, id="call_2", name="g"),
              Event("tool_args", index=0, text=":1}"), Event("tool_args", index=1, text="{}"),
              Event("finish", reason="tool_calls"), Event("usage", usage=Usage(input=9, output=4, cache_read=2))]
    out = frames_of(b"".join(enc.event(e) for e in events) + enc.finish_stream())
    assert [(e, d.get("index"), (d.get("delta") or d.get("content_block") or {}).get("type")) for e, d in out] == [
        ("message_start", None, None),
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("content_block_start", 3, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 3, "input_json_delta"), ("content_block_stop", 3, None),
        ("message_delta", None, None), ("message_stop", None, None)]
    assert all(d["type"] == e for e, d in out)
    assert out[0][1]["message"]["model"] == "alias"  # the client's name, not the upstream's "gpt"
    assert out[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert out[-2][1]["usage"]["input_tokens"] == 7 and out[-2][1]["usage"]["cache_read_input_tokens"] == 2


def test_stream_encoder_without_events_still_makes_a_message():
    enc = proto.StreamEncoder("alias", unified())
    out = frames_of(enc.finish_stream())
    assert [e for e, _ in out] == ["message_start", "message_delta", "message_stop"]
    assert out[1][1]["delta"]["stop_reason"] == "end_turn"


def decoded(frames: list) -> list:
    parser, decoder = sse.Parser(), proto.StreamDecoder()
    return [ev for event, data in parser.feed(b"".join(frames)) for ev in decoder.feed(event, data)]


def test_stream_decoder_text_thinking_tools_and_merged_usage():
    events = decoded(anthropic_frames(("a", "b"), thinking="mull", calls=[("toolu_1", "f", TOOL_ARGS)]))
    kinds = [(e.kind, e.text or e.id or e.reason) for e in events if e.kind != "usage"]
    args = json.dumps(TOOL_ARGS)
    assert kinds == [("start", "msg_fake"), ("reasoning", "mull"), ("reasoning", ""), ("text", "a"), ("text", "b"),
                     ("tool_call", "toolu_1"), ("tool_args", args[:len(args) // 2]),
                     ("tool_args", args[len(args) // 2:]), ("finish", "tool_calls")]
    # the signature_delta that closes the thinking block: the block it signs, as the native proof
    assert events[2].signature == proof("anthropic", block={"type": "thinking", "thinking": "mull",
                                                             "signature": "sig-fake"})
    # message_delta brought only output_tokens: the input side comes from message_start
    assert events[-1].usage == Usage(input=35, output=7, cache_read=20, cache_write=5, reasoning=3)


def test_stream_decoder_raises_on_error_event():
    with pytest.raises(ProtocolError) as exc:
        decoded(anthropic_frames(fail="overloaded now"))
    assert "overloaded now" in str(exc.value)


def test_passthrough_helpers():
    frames = [(e, d) for f in anthropic_frames() for e, d in sse.Parser().feed(f)]
    found = [proto.stream_usage(e, d) for e, d in frames]
    assert found[0] == Usage(input=35, output=1, cache_read=20, cache_write=5, reasoning=3)
    assert found[-2] == Usage(output=7)  # merged with the start by the server
    assert [proto.is_final(e, d) for e, d in frames].count(True) == 1 and proto.is_final(*frames[-1])
    body = proto.passthrough_body({"model": "alias", "messages": []}, "claude-sonnet-4-5", False)
    assert body == {"model": "claude-sonnet-4-5", "messages": [], "max_tokens": 64000}


# ---------------------------------------------------------------- through a real server


def chat_tools(req) -> Reply:
    """A chat model that calls the first tool offered, then reports what the tool said."""
    body = req.body or {}
    last = body["messages"][-1]
    text, calls = "hello from fake", None
    if last["role"] == "tool":
        text = "tool said: " + last["content"]
    elif body.get("tools"):
        text, calls = None, [{"id": "call_fake1", "type": "function",
                              "function": {"name": body["tools"][0]["function"]["name"],
                                           "arguments": json.dumps(TOOL_ARGS)}}]
    if not body.get("stream"):
        return Reply(body=chat_completion(text, tool_calls=calls))

    def chunk(delta, finish=None):
        return b"data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                                       "model": "m", "choices": [{"index": 0, "delta": delta,
                                                                  "finish_reason": finish}]}).encode() + b"\n\n"
    delta = {"tool_calls": [{"index": 0, **calls[0]}]} if calls else {"content": text}
    return Reply(frames=[chunk({"role": "assistant", "content": ""}), chunk(delta),
                         chunk({}, "tool_calls" if calls else "stop"), b"data: [DONE]\n\n"])


DEFAULTS = {"anthropic": anthropic_upstream, "openai": chat_tools, "google": gemini_upstream}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One server over one fake upstream per protocol, shared by the tests below."""
    with Fleet(DEFAULTS) as fleet:
        server = ServerProcess(tmp_path_factory.mktemp("home"), protocol_config(fleet.fakes, "claude-sonnet-4-5"))
        yield server, fleet
        server.stop()


@pytest.fixture
def up(world):
    return world[1]


def client(server, **kw):
    return anthropic.Anthropic(base_url=server.url, api_key="client-secret", max_retries=0, **kw)


def ask(sdk, stream, **kw):
    if not stream:
        return sdk.messages.create(**kw)
    with sdk.messages.stream(**kw) as s:
        return s.get_final_message()


ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER}]


def test_mock_provider_plain_stream_and_count(server):
    sdk = client(server)
    msg = sdk.messages.create(model="mock:echo", max_tokens=50, messages=[{"role": "user", "content": "echo me"}])
    assert msg.content[0].text == "echo me" and msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 2 and msg.usage.output_tokens == 2
    with sdk.messages.stream(model="mock:echo", max_tokens=50,
                             messages=[{"role": "user", "content": "stream me please"}]) as stream:
        assert "".join(stream.text_stream) == "stream me please"
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    count = sdk.messages.count_tokens(model="mock:echo", messages=[{"role": "user", "content": "x" * 400}],
                                      system="y" * 40)
    assert count.input_tokens == 111 + 3  # an estimate: 442 characters ("[]" for no tools) / 4, 3 a turn


def test_passthrough_forwards_versions_and_never_the_client_key(server, up):
    sdk = client(server, default_headers={"anthropic-beta": "tools-2099-01-01", "x-goog-api-key": "goog-secret"})
    msg = sdk.messages.create(model="via-anthropic", max_tokens=50, messages=ASK, extra_query={"beta": "true"})
    assert msg.content[0].text == "hello from fake"
    assert msg.usage.cache_read_input_tokens == 20  # the upstream body, unchanged
    sent = up["anthropic"].received[-1]
    assert sent.path == "/v1/messages" and sent.body["model"] == "claude-sonnet-4-5"
    assert sent.headers["x-api-key"] == "key-anthropic"
    assert sent.headers["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION  # the client's
    assert sent.headers["anthropic-beta"] == "tools-2099-01-01"
    assert "authorization" not in sent.headers and "x-goog-api-key" not in sent.headers
    raw = requests.post(server.url + "/v1/messages?key=client-secret", json={"model": "via-anthropic", "messages": ASK},
                        headers={"x-api-key": "client-secret"})
    assert raw.status_code == 200
    sent = up["anthropic"].received[-1]
    assert sent.body["max_tokens"] == 64000 and sent.path == "/v1/messages"  # filled in from the catalog
    assert sent.headers["x-api-key"] == "key-anthropic"
    assert "client-secret" not in json.dumps(sent.headers) + sent.path


def test_other_clients_get_the_default_anthropic_version_and_anthropic_headers_stay_home(server, up):
    requests.post(server.url + "/v1/chat/completions", json={"model": "via-anthropic", "messages": ASK},
                  headers={"anthropic-beta": "x"})
    sent = up["anthropic"].received[-1].headers
    assert sent["anthropic-version"] == "2023-06-01" and "anthropic-beta" not in sent
    client(server).messages.create(model="via-openai", max_tokens=50, messages=ASK)
    assert not any(h.startswith("anthropic") for h in up["openai"].received[-1].headers)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("upstream", ["anthropic", "openai", "google"])
def test_tool_round_trip(server, up, upstream, stream):
    sdk = client(server)
    msg = ask(sdk, stream, model=f"via-{upstream}", max_tokens=300, messages=ASK, tools=TOOLS)
    assert msg.stop_reason == "tool_use"
    call = next(b for b in msg.content if b.type == "tool_use")
    assert (call.name, call.input) == ("get_weather", TOOL_ARGS)
    history = ASK + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                   "content": [{"type": "text", "text": "18C"}]}]}]
    final = ask(sdk, stream, model=f"via-{upstream}", max_tokens=300, messages=history, tools=TOOLS)
    assert final.stop_reason == "end_turn"
    assert "".join(b.text for b in final.content if b.type == "text") == "tool said: 18C"
    sent = up[upstream].received[-1].body
    if upstream == "openai":  # the id came back to the call that made it
        assert call.id == "call_fake1"
        assert sent["messages"][-1] == {"role": "tool", "tool_call_id": "call_fake1", "content": "18C"}
    if upstream == "google":  # the result names its function
        assert sent["contents"][-1]["parts"][0]["functionResponse"] == {
            "name": "get_weather", "response": {"output": "18C"}}


def test_usage_with_cache_and_thinking_reaches_the_client(server, up):
    usage = {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49,
             "prompt_tokens_details": {"cached_tokens": 30}, "completion_tokens_details": {"reasoning_tokens": 4}}
    up["openai"].behaviour = lambda req: Reply(body=chat_completion(usage=usage))
    msg = client(server).messages.create(model="via-openai", max_tokens=50, messages=ASK)
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens, msg.usage.output_tokens) == (10, 30, 9)
    assert msg.usage.output_tokens_details.thinking_tokens == 4


def test_usage_totals_survive_passthrough_streams(server):
    with client(server).messages.stream(model="via-anthropic", max_tokens=10, messages=ASK) as s:
        final = s.get_final_message()
    assert final.usage.input_tokens == ANTHROPIC_USAGE["input_tokens"] and final.usage.output_tokens == 7
    # billed as input 10 + 20 cached + 5 cache writes from message_start, output 7 from message_delta
    wait_until(lambda: "model=via-anthropic upstream=up-anthropic:claude-sonnet-4-5 status=200" in server.output()
               and "tokens=35/7 stream=yes" in server.output(), what="the request log line")


def test_fast_streams_carry_no_pings(server):
    resp = requests.post(server.url + "/v1/messages", stream=True,
                         json={"model": "via-openai", "max_tokens": 10, "messages": ASK, "stream": True})
    events = [line[7:].decode() for line in resp.iter_lines() if line.startswith(b"event:")]
    assert events == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                      "message_delta", "message_stop"]


def test_pings_fill_long_silences_of_translated_streams(start_server):
    gate = threading.Event()
    with FakeUpstream(lambda req: Reply(frames=chat_stream(), gate=gate)) as fake:
        cfg = protocol_config({"openai": fake}, "gpt-4o")
        server = start_server({**cfg, "server": {"ping_interval": 0.1}})
        resp = requests.post(server.url + "/v1/messages", stream=True,
                             json={"model": "via-openai", "max_tokens": 10, "messages": ASK, "stream": True})
        lines = resp.iter_lines()
        # the upstream sent its first chunk and went quiet: BitRouter pings until it speaks again
        wait_until(lambda: next(lines) == b"event: ping" and next(lines) == b'data: {"type":"ping"}', timeout=10,
                   interval=0, what="a ping")
        gate.set()
        rest = [line for line in lines if line.startswith(b"event:")]
    assert rest[-1] == b"event: message_stop"


def test_pass_through_streams_get_no_pings_of_bitrouter(start_server):
    # A relayed chunk may end mid-event, so only the upstream's own pings may appear.
    gate = threading.Event()
    with FakeUpstream(lambda req: Reply(frames=anthropic_frames(), gate=gate)) as fake:
        cfg = protocol_config({"anthropic": fake}, "claude-sonnet-4-5")
        server = start_server({**cfg, "server": {"ping_interval": 0.05}})
        resp = requests.post(server.url + "/v1/messages", stream=True,
                             json={"model": "via-anthropic", "max_tokens": 10, "messages": ASK, "stream": True})
        lines = resp.iter_lines()
        assert next(lines) == b"event: message_start"
        threading.Timer(0.5, gate.set).start()  # silence ten ping intervals long
        events = [line for line in lines if line.startswith(b"event:")]
    assert events.count(b"event: ping") == 1  # the fake upstream's own, relayed
    assert events[-1] == b"event: message_stop"


# ---------------------------------------------------------------- errors


def test_bad_requests_get_anthropic_errors(server):
    sdk = client(server)
    with pytest.raises(anthropic.BadRequestError) as exc:
        sdk.messages.create(model="mock:echo", max_tokens=10, messages="not a list")
    assert exc.value.body["error"]["type"] == "invalid_request_error"
    assert "messages" in exc.value.body["error"]["message"]
    resp = requests.post(server.url + "/v1/messages", data=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["type"] == "error"
    with pytest.raises(anthropic.NotFoundError) as exc:
        sdk.messages.create(model="no-such-model", max_tokens=10, messages=ASK)
    assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in exc.value.body["error"]["message"]
    wrong = requests.get(server.url + "/v1/messages")
    assert wrong.status_code == 405 and wrong.json()["type"] == "error"
    missing = requests.post(server.url + "/v1/messages/batches", json={})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.count_tokens(model="no-such-model", messages=ASK)


def test_upstream_errors_pass_through_with_status_and_message(server, up):
    up["anthropic"].behaviour = lambda req: anthropic_error(400, "prompt is too long: 300000 tokens")
    up["openai"].behaviour = lambda req: error(422, "chat says no")
    with pytest.raises(anthropic.BadRequestError) as exc:
        client(server).messages.create(model="via-anthropic", max_tokens=10, messages=ASK)
    assert exc.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                         "message": "prompt is too long: 300000 tokens"}}
    with pytest.raises(anthropic.UnprocessableEntityError) as exc:
        client(server).messages.create(model="via-openai", max_tokens=10, messages=ASK)
    assert exc.value.body["error"]["message"] == "chat says no" and exc.value.body["type"] == "error"


@pytest.mark.parametrize("upstream", ["anthropic", "openai"])
def test_mid_stream_failure_ends_with_an_error_event(server, up, upstream):
    up[upstream].behaviour = (lambda req: Reply(frames=anthropic_frames(fail="upstream overloaded"))) \
        if upstream == "anthropic" else (lambda req: Reply(frames=chat_stream(), disconnect_after=2))
    with pytest.raises(anthropic.APIStatusError) as exc:
        with client(server).messages.stream(model=f"via-{upstream}", max_tokens=10, messages=ASK) as s:
            s.get_final_message()
    assert exc.value.body["type"] == "error"
    resp = requests.post(server.url + "/v1/messages", stream=True,
                         json={"model": f"via-{upstream}", "max_tokens": 10, "messages": ASK, "stream": True})
    lines = list(resp.iter_lines())
    events = [line for line in lines if line.startswith(b"event:")]
    assert resp.status_code == 200
    assert events[0] == b"event: message_start" and b"event: error" in events
    assert b"event: message_stop" not in events and b"data: [DONE]" not in lines
