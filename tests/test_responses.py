"""OpenAI Responses API: the mapping rules (table-driven) and the endpoint through a real server."""

import hashlib
import json

import openai
import pytest
import requests

from bitrouter.protocols import (Event, Message, Part, ProtocolError, Reasoning, Request, Response, ResponseFormat, Tool,
                                 ToolChoice, Usage, get, proof, sse)
from bitrouter.protocols import responses
from conftest import ServerProcess, wait_until
from fakes import (Fleet, Reply, chat_completion, chat_stream, error, openai_chat, openai_responses,
                   responses_body, responses_frames)

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def decode(**body):
    return responses.decode_request({"model": "m", **body})


def shape(req: Request) -> list:
    """Messages as (role, [(kind, text-or-id, name)]) for compact comparisons."""
    def part(p):
        if p.kind == "tool_call":
            return ("tool_call", p.id, p.name, p.arguments)
        if p.kind == "tool_result":
            return ("tool_result", p.id, p.name, [c.text for c in p.content], p.is_error)
        if p.kind in ("image", "file"):
            return (p.kind, p.url or p.data, p.media_type)
        return (p.kind, p.text)
    return [(m.role, [part(p) for p in m.parts]) for m in req.messages]


# ---------------------------------------------------------------- inbound: request decoding


DECODE_CASES = {
    "string input is one user turn": (
        {"input": "hi"},
        [("user", [("text", "hi")])]),
    "earlier assistant turns stay assistant turns": (
        {"input": [{"role": "user", "content": "a"},
                   {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "b"}]},
                   {"role": "user", "content": [{"type": "input_text", "text": "c"}]}]},
        [("user", [("text", "a")]), ("assistant", [("text", "b")]), ("user", [("text", "c")])]),
    "one turn's reasoning, message and calls merge; outputs get the call's name": (
        {"input": [{"role": "user", "content": "weather?"},
                   {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}]},
                   {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                   {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                   {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": ""},
                   {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                   {"type": "function_call_output", "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "noon"}, {"type": "input_text", "text": "UTC"}]},
                   {"role": "user", "content": "thanks"}]},
        [("user", [("text", "weather?")]),
         ("assistant", [("reasoning", "think"), ("text", "ok"),
                        ("tool_call", "call_1", "get_weather", '{"city":"Paris"}'),
                        ("tool_call", "call_2", "get_time", "{}")]),
         ("tool", [("tool_result", "call_1", "get_weather", ["18C"], False),
                   ("tool_result", "call_2", "get_time", ["noon", "UTC"], False)]),
         ("user", [("text", "thanks")])]),
    "images by URL and by data URL": (
        {"input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://x/cat.png"},
            {"type": "input_image", "image_url": "data:image/jpeg;base64,QUJD"}]}]},
        [("user", [("image", "https://x/cat.png", ""), ("image", "QUJD", "image/jpeg")])]),
    "files by data, by bare base64 with a filename, by URL": (
        {"input": [{"role": "user", "content": [
            {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,UERG"},
            {"type": "input_file", "filename": "notes.txt", "file_data": "SGk="},
            {"type": "input_file", "file_url": "https://x/report.pdf"}]}]},
        [("user", [("file", "UERG", "application/pdf"), ("file", "SGk=", "text/plain"),
                   ("file", "https://x/report.pdf", "application/pdf")])]),
    "refusal parts are kept as assistant text": (
        {"input": [{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]},
        [("assistant", [("text", "no")])]),
    "custom and namespaced calls are tool calls; hosted tools' items are left out": (
        {"input": [{"role": "user", "content": "fix it"},
                   {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}},
                   {"type": "custom_tool_call", "call_id": "call_p", "name": "apply_patch", "input": "*** Begin Patch"},
                   {"type": "function_call", "call_id": "call_r", "namespace": "mcp__fs", "name": "read",
                    "arguments": '{"path":"a"}'},
                   {"type": "custom_tool_call_output", "call_id": "call_p", "output": "applied"},
                   {"type": "function_call_output", "call_id": "call_r", "output": "text of a"}]},
        [("user", [("text", "fix it")]),
         ("assistant", [("tool_call", "call_p", "apply_patch", '{"input": "*** Begin Patch"}'),
                        ("tool_call", "call_r", "mcp__fs__read", '{"path":"a"}')]),
         ("tool", [("tool_result", "call_p", "apply_patch", ["applied"], False),
                   ("tool_result", "call_r", "mcp__fs__read", ["text of a"], False)])]),
}


@pytest.mark.parametrize("body,expected", DECODE_CASES.values(), ids=DECODE_CASES.keys())
def test_decode_input_items(body, expected):
    assert shape(decode(**body)) == expected


def test_decode_system_sources_in_order():
    req = decode(instructions="be terse", input=[{"role": "developer", "content": "use metric"},
                                                 {"role": "user", "content": "hi"},
                                                 {"role": "system", "content": [{"type": "input_text", "text": "late"}]}])
    assert [p.text for p in req.system] == ["be terse", "use metric"]
    assert shape(req) == [("user", [("text", "hi")]), ("system", [("text", "late")])]  # later ones keep their place


def test_decode_reasoning_item_keeps_raw_text_id_and_encrypted_content():
    req = decode(input=[{"type": "reasoning", "id": "rs_9", "encrypted_content": "opaque",
                         "summary": [{"type": "summary_text", "text": "short"}],
                         "content": [{"type": "reasoning_text", "text": "long"}]}])
    part = req.messages[0].parts[0]
    assert (part.kind, part.text, part.id, part.signature) == ("reasoning", "long", "rs_9", "opaque")


PARAM_CASES = {
    "sampling and limits": (
        {"max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9, "parallel_tool_calls": False},
        {"max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "parallel_tool_calls": False}),
    "json schema format": (
        {"text": {"format": {"type": "json_schema", "name": "w", "schema": WEATHER, "strict": True}}},
        {"response_format": ResponseFormat("json_schema", "w", WEATHER, strict=True)}),
    "json object format": ({"text": {"format": {"type": "json_object"}}}, {"response_format": ResponseFormat("json_object")}),
    "text format is no format": ({"text": {"format": {"type": "text"}, "verbosity": "low"}}, {"response_format": None}),
    "reasoning effort": ({"reasoning": {"effort": "high", "summary": "auto"}}, {"reasoning": Reasoning("high")}),
    "safety identifier is the user": ({"safety_identifier": "u-1"}, {"user": "u-1"}),
    "function tools": (
        {"tools": [{"type": "function", "name": "get_weather", "description": "d", "parameters": WEATHER}]},
        {"tools": [Tool("get_weather", "d", WEATHER)]}),
    "tool_choice required": ({"tool_choice": "required"}, {"tool_choice": ToolChoice("required")}),
    "tool_choice named function": (
        {"tool_choice": {"type": "function", "name": "get_weather"}},
        {"tool_choice": ToolChoice("required", "get_weather")}),
    "allowed_tools narrows the tools": (
        {"tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}],
         "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "b"}]}},
        {"tools": [Tool("b")], "tool_choice": ToolChoice("required")}),
}


@pytest.mark.parametrize("body,expected", PARAM_CASES.values(), ids=PARAM_CASES.keys())
def test_decode_parameters(body, expected):
    req = decode(input="hi", **body)
    assert {key: getattr(req, key) for key in expected} == expected


REJECT_CASES = {
    "previous_response_id": ({"previous_response_id": "resp_1"}, "previous_response_id"),
    "conversation": ({"conversation": "conv_1"}, "conversation"),
    "background": ({"background": True}, "background"),
    "item_reference": ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference"),
    "unknown item type": ({"input": [{"type": "telepathy_call", "id": "t_1"}]}, "telepathy_call"),
    "file by file id": ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
                        "file_id"),
    "image by file id": ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
                         "file_id"),
    "unknown role": ({"input": [{"role": "critic", "content": "x"}]}, "critic"),
    "hosted tool choice": ({"tool_choice": {"type": "file_search"}}, "file_search"),
    "unknown format": ({"text": {"format": {"type": "grammar"}}}, "grammar"),
    "no input": ({"input": None}, "input"),
    "content neither string nor array": ({"input": [{"role": "user", "content": 5}]},
                                         "input[0].content: must be a string or an array"),
}


@pytest.mark.parametrize("body,needle", REJECT_CASES.values(), ids=REJECT_CASES.keys())
def test_untranslatable_requests_are_clear_400s(body, needle):
    with pytest.raises(ProtocolError) as info:
        decode(**{"input": "hi", **body})
    assert info.value.status == 400 and needle in str(info.value)


CODEX_TOOLS = [
    {"type": "function", "name": "shell", "description": "run", "parameters": WEATHER},
    {"type": "custom", "name": "apply_patch", "description": "a patch", "format": {"type": "grammar"}},
    {"type": "namespace", "name": "mcp__fs", "description": "files",
     "tools": [{"type": "function", "name": "read", "description": "read one", "parameters": WEATHER},
               {"type": "function", "name": "ls"}]},
    {"type": "web_search"}, {"type": "image_generation"}]


def test_hosted_tools_are_dropped_custom_and_namespaced_tools_become_functions():
    req = decode(input="hi", tools=CODEX_TOOLS)
    assert req.dropped == ["web_search", "image_generation"]  # only OpenAI can run them
    shell, patch, read, ls = req.tools
    assert shell == Tool("shell", "run", WEATHER)
    assert patch == Tool("apply_patch", "a patch", patch.parameters, kind="custom")
    assert patch.parameters["properties"]["input"]["type"] == "string" and patch.parameters["required"] == ["input"]
    assert read == Tool("mcp__fs__read", "read one", WEATHER, namespace="mcp__fs", original_name="read")
    assert ls == Tool("mcp__fs__ls", "files", {}, namespace="mcp__fs", original_name="ls")


# ---------------------------------------------------------------- inbound: response encoding


def test_encode_response_items_in_part_order_with_usage():
    resp = Response(id="chatcmpl-1", model="up-model", finish_reason="tool_calls",
                    usage=Usage(input=10, output=6, cache_read=3, cache_write=1, reasoning=2),
                    parts=[Part("reasoning", text="hm", signature="sig"), Part("text", text="a"),
                           Part("text", text="b"), Part("tool_call", id="call_1", name="f", arguments="")])
    body = responses.encode_response(resp, "asked")
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["status"] == "completed"
    assert body["model"] == "asked"  # the client's name, never the upstream's
    kinds = [item["type"] for item in body["output"]]
    assert kinds == ["reasoning", "message", "function_call"]
    reasoning, message, call = body["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "hm"}] and reasoning["encrypted_content"] == "sig"
    assert message["content"][0]["text"] == "ab" and message["role"] == "assistant"
    assert (call["call_id"], call["name"], call["arguments"]) == ("call_1", "f", "{}")
    assert body["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 1},
                             "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 2},
                             "total_tokens": 16}


def test_encode_response_gives_calls_back_as_the_client_declared_them():
    request = decode(input="hi", tools=CODEX_TOOLS)
    resp = Response(id="x", model="up", finish_reason="tool_calls", parts=[
        Part("tool_call", id="call_p", name="apply_patch", arguments='{"input": "*** Begin Patch"}'),
        Part("tool_call", id="call_r", name="mcp__fs__read", arguments='{"city":"P"}'),
        Part("tool_call", id="call_s", name="shell", arguments="{}")])
    patch, read, shell = responses.encode_response(resp, "asked", request)["output"]
    assert patch["id"].startswith("ctc_") and {k: v for k, v in patch.items() if k != "id"} == {
        "type": "custom_tool_call", "status": "completed", "call_id": "call_p", "name": "apply_patch",
        "input": "*** Begin Patch"}
    assert (read["type"], read["namespace"], read["name"], read["arguments"]) == \
        ("function_call", "mcp__fs", "read", '{"city":"P"}')
    assert (shell["type"], shell["name"], "namespace" in shell) == ("function_call", "shell", False)


@pytest.mark.parametrize("reason,status,detail", [("stop", "completed", None), ("tool_calls", "completed", None),
                                                  ("length", "incomplete", "max_output_tokens"),
                                                  ("content_filter", "incomplete", "content_filter"),
                                                  ("error", "failed", None)])
def test_finish_reasons_become_status(reason, status, detail):
    body = responses.encode_response(Response("x", "m", [Part("text", text="t")], reason), "m")
    assert body["status"] == status
    assert (body["incomplete_details"] or {}).get("reason") == detail
    assert (body["error"] is not None) == (status == "failed")


def test_anthropic_thinking_survives_a_responses_client_round_trip():
    """Signed thinking goes out as encrypted_content and comes back as the same signed block."""
    anthropic = get("anthropic")
    reply = anthropic.decode_response({"id": "msg_1", "model": "claude", "stop_reason": "tool_use", "usage": {},
                                       "content": [{"type": "thinking", "thinking": "plan", "signature": "sig-A"},
                                                   {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]})
    output = responses.encode_response(reply, "m")["output"]
    history = [{"role": "user", "content": "go"}, *output,
               {"type": "function_call_output", "call_id": "toolu_1", "output": "done"}]
    body = anthropic.encode_request(decode(input=history), "claude")
    assert body["messages"][1]["content"][:2] == [
        {"type": "thinking", "thinking": "plan", "signature": "sig-A"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]


# ---------------------------------------------------------------- upstream: request encoding


def unified(*messages, **fields) -> Request:
    return Request(model="m", messages=list(messages), **fields)


def test_encode_request_items_and_fields():
    req = unified(Message("user", [Part("text", text="hi"), Part("image", data="QUJD", media_type="image/png")]),
                  Message("assistant", [Part("text", text="let me check"),
                                        Part("tool_call", id="call_1", name="get_weather", arguments='{"city":"P"}')]),
                  Message("tool", [Part("tool_result", id="call_1", content=[Part("text", text="boom")], is_error=True)]),
                  system=[Part("text", text="one"), Part("text", text="two")],
                  tools=[Tool("get_weather", "d", WEATHER)], tool_choice=ToolChoice("required", "get_weather"),
                  parallel_tool_calls=False, max_tokens=99, temperature=0.5, top_p=0.7, top_k=40, stop=["END"],
                  response_format=ResponseFormat("json_schema", "w", WEATHER, strict=True),
                  reasoning=Reasoning(budget_tokens=8000), stream=True, user="u")
    body = responses.encode_request(req, "gpt-x")
    assert body["model"] == "gpt-x" and body["store"] is False and body["stream"] is True
    assert body["instructions"] == "one\n\ntwo"
    assert body["input"] == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "hi"},
            {"type": "input_image", "image_url": "data:image/png;base64,QUJD", "detail": "auto"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "let me check"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"P"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Error: boom"}]
    assert body["tools"] == [{"type": "function", "name": "get_weather", "description": "d",
                              "parameters": WEATHER, "strict": False}]
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert (body["parallel_tool_calls"], body["max_output_tokens"], body["temperature"], body["top_p"]) == \
        (False, 99, 0.5, 0.7)
    assert body["text"] == {"format": {"type": "json_schema", "name": "w", "schema": WEATHER, "strict": True}}
    assert body["reasoning"] == {"effort": "medium"}
    assert body["include"] == ["reasoning.encrypted_content"]  # store is false: the only way to replay it
    assert body["safety_identifier"] == "u"
    assert "top_k" not in body and "stop" not in body  # the Responses API has neither


def test_encode_request_replays_only_openai_reasoning():
    item = {"type": "reasoning", "id": "rs_1", "encrypted_content": "enc",
            "summary": [{"type": "summary_text", "text": "as OpenAI wrote it"}]}
    claude = proof("anthropic", block={"type": "thinking", "thinking": "x", "signature": "s"})
    own = proof("responses", item=item)
    req = unified(Message("assistant", [Part("reasoning", text="mine", id="rs_1", signature=own),
                                        Part("reasoning", text="claude's", signature=claude),
                                        Part("reasoning", text="no proof", id="rs_2"),
                                        Part("text", text="answer")]))
    items = responses.encode_request(req, "m")["input"]
    assert items[0] == item  # exactly as OpenAI sent it
    assert [i["type"] for i in items] == ["reasoning", "message"]
    assert "include" not in responses.encode_request(req, "m")  # no reasoning asked for


def test_encode_request_system_message_in_place_cache_key_and_long_user_ids():
    long_user = json.dumps({"device_id": "d" * 64, "session_id": "s"})
    req = unified(Message("user", [Part("text", text="hi")]), Message("system", [Part("text", text="be brief")]),
                  Message("user", [Part("text", text="go")]), system=[Part("text", text="top")],
                  user=long_user, cache_key="sess-1")
    body = responses.encode_request(req, "m")
    assert body["instructions"] == "top"
    assert body["input"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]}]
    assert body["prompt_cache_key"] == "sess-1"
    assert body["safety_identifier"] == hashlib.sha256(long_user.encode()).hexdigest()  # at most 64 characters
    assert "prompt_cache_key" not in responses.encode_request(unified(), "m")
    assert decode(input="hi", prompt_cache_key="k").cache_key == "k"


def test_files_go_upstream_as_input_file():
    req = unified(Message("user", [Part("file", data="UERG", media_type="application/pdf"),
                                   Part("file", url="https://x/r.pdf", media_type="application/pdf")]))
    assert responses.encode_request(req, "m")["input"][0]["content"] == [
        {"type": "input_file", "filename": "file.pdf", "file_data": "data:application/pdf;base64,UERG"},
        {"type": "input_file", "file_url": "https://x/r.pdf"}]


def test_tool_result_with_image_becomes_an_output_list():
    req = unified(Message("tool", [Part("tool_result", id="c", content=[Part("text", text="see"),
                                                                        Part("image", url="https://x/p.png")])]))
    assert responses.encode_request(req, "m")["input"][0]["output"] == [
        {"type": "input_text", "text": "see"}, {"type": "input_image", "image_url": "https://x/p.png", "detail": "auto"}]


# ---------------------------------------------------------------- upstream: response decoding


def test_decode_response_items_usage_and_finish():
    resp = responses.decode_response(responses_body("hi", calls=[("call_1", "f", '{"a":1}')], reasoning="hm"))
    assert [(p.kind, p.text or p.id) for p in resp.parts] == [("reasoning", "hm"), ("text", "hi"), ("tool_call", "call_1")]
    # the whole item, as OpenAI sent it, is the native proof that replays it
    assert resp.parts[0].signature == proof("responses", item={
        "type": "reasoning", "id": "rs_fake", "encrypted_content": "enc-fake",
        "summary": [{"type": "summary_text", "text": "hm"}]}) and resp.parts[0].id == "rs_fake"
    assert resp.finish_reason == "tool_calls"
    assert resp.usage == Usage(input=11, output=7, cache_read=4, reasoning=2)
    assert responses.decode_response(responses_body(status="incomplete", incomplete="max_output_tokens")
                                     ).finish_reason == "length"
    with pytest.raises(ProtocolError) as info:
        responses.decode_response({**responses_body(), "status": "failed", "error": {"message": "melted"}})
    assert info.value.status == 502 and "melted" in str(info.value)


def test_stream_encoder_sends_a_custom_tools_input_whole_and_names_namespaced_calls():
    enc = responses.StreamEncoder("asked", decode(input="hi", tools=CODEX_TOOLS))
    events = [Event("start", id="x", model="up"), Event("tool_call", index=0, id="call_p", name="apply_patch"),
              Event("tool_args", index=0, text='{"input": "*** Begin'), Event("tool_args", index=0, text=' Patch"}'),
              Event("tool_call", index=1, id="call_r", name="mcp__fs__read"),
              Event("tool_args", index=1, text='{"city":"P"}'), Event("finish", reason="tool_calls")]
    data = b"".join(enc.event(e) for e in events) + enc.finish_stream()
    frames = [json.loads(body) for _, body in sse.Parser().feed(data)]
    deltas = [f["item_id"] for f in frames if f["type"] == "response.function_call_arguments.delta"]
    added = [f["item"] for f in frames if f["type"] == "response.output_item.added"]
    done = [f["item"] for f in frames if f["type"] == "response.output_item.done"]
    assert [(i["type"], i["name"], i.get("namespace")) for i in added] == [
        ("custom_tool_call", "apply_patch", None), ("function_call", "read", "mcp__fs")]
    assert deltas == [added[1]["id"]]  # only the function call streams its arguments
    assert [(i["type"], i["call_id"], i.get("input"), i.get("arguments")) for i in done] == [
        ("custom_tool_call", "call_p", "*** Begin Patch", None), ("function_call", "call_r", None, '{"city":"P"}')]
    assert frames[-1]["type"] == "response.completed" and frames[-1]["response"]["model"] == "asked"
    assert frames[-1]["response"]["output"] == done


def decoded(frames) -> list:
    parser, decoder = sse.Parser(), responses.StreamDecoder()
    return [ev for f in frames for name, data in parser.feed(f) for ev in decoder.feed(name, data)]


def test_stream_decoder_events():
    events = decoded(responses_frames(words=("a", "b"), calls=[("call_1", "f", '{"x":1}')], reasoning="r"))
    assert [(e.kind, e.text or e.id or e.reason) for e in events] == [
        ("start", "resp_fake"), ("reasoning", "r"), ("reasoning", ""), ("text", "a"), ("text", "b"),
        ("tool_call", "call_1"), ("tool_args", '{"x'), ("tool_args", '":1}'), ("finish", "tool_calls"), ("usage", "")]
    assert events[2].signature == proof("responses", item={  # the finished reasoning item
        "type": "reasoning", "id": "rs_fake", "encrypted_content": "enc-fake",
        "summary": [{"type": "summary_text", "text": "r"}]})
    assert events[-1].usage == Usage(input=11, output=7, cache_read=4, reasoning=2)


def test_stream_decoder_takes_calls_announced_only_when_done():
    item = {"type": "function_call", "call_id": "call_9", "name": "g", "arguments": '{"k":2}'}
    frames = [sse.frame({"type": "response.output_item.done", "output_index": 0, "item": item}, "response.output_item.done"),
              sse.frame({"type": "response.completed", "response": responses_body(text="")}, "response.completed")]
    assert [(e.kind, e.id or e.text or e.reason) for e in decoded(frames)] == [
        ("start", ""), ("tool_call", "call_9"), ("tool_args", '{"k":2}'), ("finish", "tool_calls"), ("usage", "")]


@pytest.mark.parametrize("frame", [
    sse.frame({"type": "response.failed", "response": {"error": {"message": "melted"}}}, "response.failed"),
    sse.frame({"type": "error", "message": "melted", "code": "server_error"}, "error")])
def test_stream_decoder_raises_on_upstream_failure(frame):
    with pytest.raises(ProtocolError, match="melted"):
        decoded(responses_frames()[:3] + [frame])


def test_passthrough_helpers():
    completed = responses_frames()[-1].decode().split("data: ", 1)[1].strip()
    assert responses.is_final("response.completed", completed) and responses.is_final("", completed)
    assert not responses.is_final("response.output_text.delta", '{"type":"response.output_text.delta"}')
    assert responses.stream_usage("response.completed", completed) == Usage(11, 7, 4, 0, 2)
    assert responses.stream_usage("response.created", '{"type":"response.created","usage":null}') is None
    assert responses.passthrough_body({"model": "a", "previous_response_id": "r"}, "b", True) == \
        {"model": "b", "previous_response_id": "r"}


# ---------------------------------------------------------------- through a real server


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One server over a fake Chat and a fake Responses upstream, shared by the tests below."""
    with Fleet({"chat": openai_chat, "resp": openai_responses}) as fleet:
        cfg = {"providers": {
            "chat": {"derives": "openai", "api_base": fleet["chat"].url + "/v1", "api_key": "chat-key"},
            "resp": {"derives": "openai", "api_protocol": "responses", "api_base": fleet["resp"].url + "/v1",
                     "api_key": "resp-key"}}}
        server = ServerProcess(tmp_path_factory.mktemp("responses-home"), cfg)
        yield server, fleet
        server.stop()


@pytest.fixture
def fakes(world):
    return world[1]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="client-key", max_retries=0)


def raw_events(resp) -> list:
    """(event line, parsed data) pairs of an SSE reply."""
    parser = sse.Parser()
    return [(name, json.loads(data)) for chunk in resp.iter_content(None) for name, data in parser.feed(chunk)]


def test_broken_stream_error_events_match_between_translated_and_relayed_streams():
    encoder = responses.StreamEncoder("m", Request(model="m", messages=[]))
    encoder.event(Event("text", text="partial"))
    events = sse.Parser().feed(encoder.error(429, "slow down"))
    (failed_name, failed), (error_name, error_event) = [(name, json.loads(data)) for name, data in events[-2:]]
    assert (failed_name, failed["response"]["status"]) == ("response.failed", "failed")
    assert failed["response"]["error"] == {"code": "rate_limit_exceeded", "message": "slow down"}
    assert error_event["sequence_number"] == failed["sequence_number"] + 1
    [(relayed_name, relayed)] = sse.Parser().feed(responses.stream_error(429, "slow down"))
    assert error_name == relayed_name == "error"
    assert {k: v for k, v in error_event.items() if k != "sequence_number"} == json.loads(relayed) == {
        "type": "error", "code": "rate_limit_exceeded", "message": "slow down", "param": None,
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}}


def test_sdk_against_chat_upstream(server, fakes):
    fakes["chat"].behaviour = lambda req: Reply(body=chat_completion(
        "four", usage={"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14,
                       "prompt_tokens_details": {"cached_tokens": 6},
                       "completion_tokens_details": {"reasoning_tokens": 3}}))
    resp = client(server).responses.create(model="chat:gpt-x", instructions="be terse", input="2+2?",
                                           max_output_tokens=20)
    assert resp.output_text == "four" and resp.status == "completed"
    assert (resp.usage.input_tokens, resp.usage.input_tokens_details.cached_tokens, resp.usage.output_tokens,
            resp.usage.output_tokens_details.reasoning_tokens, resp.usage.total_tokens) == (9, 6, 5, 3, 14)
    sent = fakes["chat"].received[-1].body
    assert sent["messages"] == [{"role": "system", "content": "be terse"}, {"role": "user", "content": "2+2?"}]
    assert sent["max_completion_tokens"] == 20


def test_sdk_stream_helper_accepts_the_event_sequence(server):
    with client(server).responses.stream(model="chat:gpt-x", input="hi") as stream:
        deltas = [ev.delta for ev in stream if ev.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "hello from fake" and final.output_text == "hello from fake"
    assert final.usage.input_tokens == 5 and final.usage.output_tokens == 3


def test_stream_wire_format(server):
    resp = requests.post(server.url + "/v1/responses", json={"model": "chat:gpt-x", "input": "hi", "stream": True},
                         stream=True, timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = raw_events(resp)
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    kinds = [name for name, _ in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"] + ["response.output_text.delta"] * 3 + [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    ids = {data["response"]["id"] for name, data in events if "response" in data}
    assert len(ids) == 1
    done = events[-1][1]["response"]
    assert done["status"] == "completed" and done["usage"]["total_tokens"] == 8
    assert done["output"][0]["content"][0]["text"] == "hello from fake"


def test_streamed_tool_calls_from_chat_upstream(server, fakes):
    def chunk(delta, finish=None):
        body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return sse.frame(body)
    call = lambda i, **f: {"tool_calls": [{"index": i, **f}]}  # noqa: E731
    frames = [chunk({"role": "assistant", "content": "checking"}),
              chunk(call(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""})),
              chunk(call(1, id="call_b", type="function", function={"name": "get_weather", "arguments": '{"city":'})),
              chunk(call(0, function={"arguments": '{"city":"Paris"}'})),  # interleaved deltas
              chunk(call(1, function={"arguments": '"Rome"}'})),
              chunk({}, "tool_calls"), b"data: [DONE]\n\n"]
    fakes["chat"].behaviour = lambda req: Reply(frames=frames)
    with client(server).responses.stream(model="chat:gpt-x", input="weather in Paris and Rome?") as stream:
        final = stream.get_final_response()
    calls = [(i.call_id, i.name, json.loads(i.arguments)) for i in final.output if i.type == "function_call"]
    assert calls == [("call_a", "get_weather", {"city": "Paris"}), ("call_b", "get_weather", {"city": "Rome"})]
    assert final.output[0].type == "message" and final.output_text == "checking"


def test_passthrough_to_responses_upstream_keeps_state_fields(server, fakes):
    body = {"model": "resp:gpt-5", "input": "again", "previous_response_id": "resp_prev", "store": True,
            "include": ["reasoning.encrypted_content"], "tools": [{"type": "web_search"}]}
    resp = requests.post(server.url + "/v1/responses", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    sent = fakes["resp"].received[-1]
    assert sent.path == "/v1/responses" and sent.headers["authorization"] == "Bearer resp-key"
    assert sent.body == {**body, "model": "gpt-5"}
    assert resp.json()["id"] == "resp_fake"


def test_streaming_passthrough_relays_upstream_events(server):
    with client(server).responses.stream(model="resp:gpt-5", input="hi") as stream:
        final = stream.get_final_response()
    assert final.id == "resp_fake" and final.output_text == "hello from fake"


@pytest.mark.parametrize("client_path,body", [
    ("/v1/responses", {"model": "resp:gpt-5", "input": "hi", "stream": True}),  # pass-through
    ("/v1/chat/completions", {"model": "resp:gpt-5", "messages": [{"role": "user", "content": "hi"}],
                              "stream": True})])  # translated
def test_streamed_usage_is_recorded_with_cache_and_reasoning(server, client_path, body):
    def metrics():
        return requests.get(server.url + "/admin/metrics?recent=1", timeout=5).json()
    before = metrics()["totals"]["since_start"]["requests"]
    resp = requests.post(server.url + client_path, json=body, stream=True, timeout=30)
    assert resp.status_code == 200 and resp.content

    def finished():
        snapshot = metrics()
        return snapshot["recent"][0] if snapshot["totals"]["since_start"]["requests"] > before else None
    latest = wait_until(finished, what="the request's record")
    assert latest["status"] == 200
    assert latest["usage"] == {"input": 11, "output": 7, "cache_read": 4, "cache_write": 0, "reasoning": 2}


CODEX_TURN = {
    "model": "chat:gpt-x", "instructions": "You are Codex.", "stream": True, "store": False,
    "include": ["reasoning.encrypted_content"], "prompt_cache_key": "session-1", "tool_choice": "auto",
    "parallel_tool_calls": False, "reasoning": {"effort": "high", "summary": "auto"}, "text": {"verbosity": "low"},
    "tools": [{"type": "function", "name": "shell", "description": "Run a command", "strict": False,
               "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                              "required": ["command"], "additionalProperties": False}}],
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sandbox: read-only"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context/>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": None, "encrypted_content": "gAAAA-opaque"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_ls", "name": "shell",
         "arguments": '{"command":["ls"]}'},
        {"type": "function_call_output", "call_id": "call_ls", "output": "README.md\nsetup.cfg"},
        {"type": "message", "role": "assistant", "id": "msg_1",
         "content": [{"type": "output_text", "text": "Two files.", "annotations": []}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "thanks"}]}]}


def test_codex_shaped_turn_translates_to_chat(server, fakes):
    resp = requests.post(server.url + "/v1/responses", json=CODEX_TURN, stream=True, timeout=30)
    assert resp.status_code == 200 and raw_events(resp)[-1][0] == "response.completed"
    sent = fakes["chat"].received[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "You are Codex.\n\nsandbox: read-only"},
        {"role": "user", "content": "<environment_context/>"},
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_ls", "type": "function", "function": {"name": "shell", "arguments": '{"command":["ls"]}'}}]},
        {"role": "tool", "tool_call_id": "call_ls", "content": "README.md\nsetup.cfg"},
        {"role": "assistant", "content": "Two files."},
        {"role": "user", "content": "thanks"}]
    assert (sent["reasoning_effort"], sent["parallel_tool_calls"], sent["tool_choice"]) == ("high", False, "auto")
    assert sent["tools"][0]["function"]["name"] == "shell"
    assert not {"store", "include", "prompt_cache_key", "text", "instructions", "input"} & set(sent)


def test_state_needing_request_to_chat_upstream_is_a_400(server, fakes):
    before = len(fakes["chat"].received)
    with pytest.raises(openai.BadRequestError) as info:
        client(server).responses.create(model="chat:gpt-x", input="again", previous_response_id="resp_prev")
    assert "previous_response_id" in info.value.message
    assert info.value.body["type"] == "invalid_request_error"
    assert len(fakes["chat"].received) == before


def test_chat_client_against_responses_upstream(server, fakes):
    oa = client(server)
    resp = oa.chat.completions.create(
        model="resp:gpt-5", messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}], max_tokens=30)
    assert resp.choices[0].message.content == "hello from fake"
    assert resp.usage.prompt_tokens == 11 and resp.usage.prompt_tokens_details.cached_tokens == 4
    assert resp.usage.completion_tokens_details.reasoning_tokens == 2
    sent = fakes["resp"].received[-1].body
    assert sent["instructions"] == "sys" and sent["store"] is False and sent["max_output_tokens"] == 30
    assert sent["input"] == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    assert sent["tools"][0]["strict"] is False
    chunks = list(oa.chat.completions.create(model="resp:gpt-5", messages=[{"role": "user", "content": "hi"}],
                                             stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello from fake"
    assert chunks[-1].usage.total_tokens == 18
    assert fakes["resp"].received[-1].body["stream"] is True


def test_upstream_failure_mid_stream_reaches_chat_client_as_error(server, fakes):
    fakes["resp"].behaviour = lambda req: Reply(frames=responses_frames(fail="model melted"))
    resp = requests.post(server.url + "/v1/chat/completions", stream=True, timeout=30,
                         json={"model": "resp:gpt-5", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    frames = [line for line in resp.iter_lines() if line.startswith(b"data: ")]
    errors = [json.loads(f[6:]) for f in frames if b'"error"' in f]
    assert errors and "model melted" in errors[0]["error"]["message"]


def test_chat_upstream_dropping_mid_stream_ends_responses_stream_with_error(server, fakes):
    fakes["chat"].behaviour = lambda req: Reply(frames=chat_stream(), disconnect_after=2)
    with pytest.raises(openai.APIError):
        with client(server).responses.stream(model="chat:gpt-x", input="hi") as stream:
            for _ in stream:
                pass
    resp = requests.post(server.url + "/v1/responses", json={"model": "chat:gpt-x", "input": "hi", "stream": True},
                         stream=True, timeout=30)
    name, data = raw_events(resp)[-1]
    assert name == "error" and data["type"] == "error" and data["error"]["message"]


def test_upstream_http_error_is_openai_shaped(server, fakes):
    fakes["chat"].behaviour = lambda req: error(400, "bad temperature")
    resp = requests.post(server.url + "/v1/responses", json={"model": "chat:gpt-x", "input": "hi"}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["message"] == "bad temperature"


@pytest.mark.parametrize("body,status", [({"input": "hi"}, 400), ({"model": "chat:x", "input": 7}, 400),
                                         ({"model": "nope", "input": "hi"}, 404)])
def test_bad_requests_get_openai_shaped_errors(server, body, status):
    resp = requests.post(server.url + "/v1/responses", json=body, timeout=30)
    assert resp.status_code == status and set(resp.json()["error"]) >= {"message", "type"}


def test_mock_provider_speaks_responses(server):
    resp = client(server).responses.create(model="mock:echo", input="echo me")
    assert resp.output_text == "echo me"


def test_input_tokens_counts(server):
    short = client(server).responses.input_tokens.count(model="chat:gpt-x", input="hi")
    long = client(server).responses.input_tokens.count(model="chat:gpt-x", input="hi " * 400,
                                                       instructions="be terse")
    assert short.object == "response.input_tokens" and 0 < short.input_tokens < long.input_tokens


def test_a_custom_tool_inside_a_namespace_takes_one_string_input():
    req = responses.decode_request({"model": "m", "input": "hi", "tools": [
        {"type": "namespace", "name": "ns", "tools": [{"type": "custom", "name": "patch", "description": "d"}]}]})
    tool = req.tools[0]
    assert (tool.name, tool.kind, tool.namespace, tool.original_name) == ("ns__patch", "custom", "ns", "patch")
    assert tool.parameters["required"] == ["input"]
