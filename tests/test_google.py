"""Google Gemini: the mapping rules (table-driven) and the endpoints through a real server."""

import json

import pytest
import requests
from google import genai
from google.genai import errors, types

from bitrouter.protocols import (Event, Message, Part, ProtocolError, Reasoning, Request, Response, ResponseFormat, Tool,
                                 ToolChoice, Usage, proof, sse)
from bitrouter.protocols import google as proto
from conftest import ServerProcess, wait_until
from fakes import (TOOL_ARGS, Fleet, Reply, anthropic_error, anthropic_upstream, chat_completion, chat_stream,
                   gemini_error, gemini_frames, gemini_response, gemini_upstream, protocol_config)
from shapes import shape

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PNG = "iVBORw0KGgo="


def decode(contents=(), **body):
    return proto.decode_request({"contents": list(contents), **body})


def user(*parts):
    return {"role": "user", "parts": list(parts)}


def model(*parts):
    return {"role": "model", "parts": list(parts)}


def call(name, args=None, **extra):
    return {"functionCall": {"name": name, "args": args or {}, **extra}}


def answer(name, response, **extra):
    return {"functionResponse": {"name": name, "response": response, **extra}}


# ---------------------------------------------------------------- inbound: request decoding

DECODE_CASES = {
    "turns keep their roles; a missing role is the user": (
        [{"parts": [{"text": "hi"}]}, model({"text": "hello"}), user({"text": "again"})],
        [("user", [("text", "hi")]), ("assistant", [("text", "hello")]), ("user", [("text", "again")])]),
    "inline data and file URIs": (
        [user({"text": "look"}, {"inlineData": {"mimeType": "image/jpeg", "data": PNG}},
              {"fileData": {"mimeType": "application/pdf", "fileUri": "https://x/doc.pdf"}})],
        [("user", [("text", "look"), ("image", PNG, "image/jpeg"),
                   ("file", "https://x/doc.pdf", "application/pdf")])]),
    "calls get stable ids; responses pair by name whatever their order, then text follows": (
        [user({"text": "weather and time?"}),
         model({"text": "hmm", "thought": True, "thoughtSignature": "c2ln"}, call("get_weather", TOOL_ARGS),
               call("get_time")),
         user(answer("get_time", {"output": "noon"}), answer("get_weather", {"output": "18C"}), {"text": "thanks"})],
        [("user", [("text", "weather and time?")]),
         ("assistant", [("reasoning", "hmm", "c2ln"), ("tool_call", "call_1_1", "get_weather", TOOL_ARGS),
                        ("tool_call", "call_1_2", "get_time", {})]),
         ("tool", [("tool_result", "call_1_2", "get_time", [("text", "noon")], False),
                   ("tool_result", "call_1_1", "get_weather", [("text", "18C")], False)]),
         ("user", [("text", "thanks")])]),
    "the same function twice pairs in order; nameless responses pair by position": (
        [model(call("get_weather", {"city": "A"}), call("get_weather", {"city": "B"}), call("get_time")),
         user(answer("get_weather", {"result": "1"}), answer("get_weather", {"result": "2"}),
              {"functionResponse": {"response": {"output": "noon"}}})],
        [("assistant", [("tool_call", "call_0_0", "get_weather", {"city": "A"}),
                        ("tool_call", "call_0_1", "get_weather", {"city": "B"}),
                        ("tool_call", "call_0_2", "get_time", {})]),
         ("tool", [("tool_result", "call_0_0", "get_weather", [("text", "1")], False),
                   ("tool_result", "call_0_1", "get_weather", [("text", "2")], False),
                   ("tool_result", "call_0_2", "get_time", [("text", "noon")], False)])]),
    "ids the client sent win; errors, structured and multimodal results": (
        [model(call("get_weather", id="toolu_9"), call("lookup", id="call_x"), call("render", id="r1")),
         {"role": "function", "parts": [
             answer("get_weather", {"error": "no network"}, id="toolu_9"),
             answer("lookup", {"rows": [1, 2]}, id="call_x"),
             answer("render", {"output": "done"}, id="r1",
                    parts=[{"inlineData": {"mimeType": "image/png", "data": PNG}}])]}],
        [("assistant", [("tool_call", "toolu_9", "get_weather", {}), ("tool_call", "call_x", "lookup", {}),
                        ("tool_call", "r1", "render", {})]),
         ("tool", [("tool_result", "toolu_9", "get_weather", [("text", "no network")], True),
                   ("tool_result", "call_x", "lookup", [("text", '{"rows": [1, 2]}')], False),
                   ("tool_result", "r1", "render", [("text", "done"), ("image", PNG, "image/png")], False)])]),
    "a signature on a call or text is a reasoning part before it": (
        [model({"text": "checking"}, {**call("get_weather", TOOL_ARGS), "thoughtSignature": "c2ln"},
               call("get_time")),
         model({"text": "done", "thoughtSignature": "dGV4dA=="})],
        [("assistant", [("text", "checking"), ("reasoning", "", "c2ln"),
                        ("tool_call", "call_0_1", "get_weather", TOOL_ARGS),
                        ("tool_call", "call_0_2", "get_time", {})]),
         ("assistant", [("reasoning", "", "dGV4dA=="), ("text", "done")])]),
    "code execution parts have no unified form": (
        [model({"executableCode": {"language": "PYTHON", "code": "1+1"}},
               {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "2"}}, {"text": "2"})],
        [("assistant", [("text", "2")])]),
}


@pytest.mark.parametrize("contents,expected", DECODE_CASES.values(), ids=DECODE_CASES.keys())
def test_decode_contents(contents, expected):
    assert shape(decode(contents).messages) == expected


@pytest.mark.parametrize("system,expected", [
    ({"parts": [{"text": "one"}, {"text": "two"}]}, ["one", "two"]),
    ({"role": "system", "parts": [{"text": "only"}]}, ["only"]),
    ("bare string", ["bare string"]),
    (None, []),
])
def test_system_instruction(system, expected):
    assert [p.text for p in decode(systemInstruction=system).system] == expected


@pytest.mark.parametrize("config,expected", [
    ({"mode": "AUTO"}, ToolChoice("auto")),
    ({"mode": "VALIDATED"}, ToolChoice("auto")),
    ({"mode": "NONE"}, ToolChoice("none")),
    ({"mode": "ANY"}, ToolChoice("required")),
    ({"mode": "ANY", "allowedFunctionNames": ["get_weather"]}, ToolChoice("required", "get_weather")),
    ({"mode": "ANY", "allowedFunctionNames": ["a", "b"]}, ToolChoice("required")),
    ({}, None),
])
def test_tool_config_in(config, expected):
    assert decode(toolConfig={"functionCallingConfig": config}).tool_choice == expected


def test_tools_sampling_thinking_and_json_in():
    gemini_schema = {"type": "OBJECT", "properties": {"city": {"type": "STRING", "nullable": True},
                                                      "days": {"type": "ARRAY", "items": {"type": "INTEGER"}}},
                     "required": ["city"]}
    req = decode(tools=[{"functionDeclarations": [{"name": "get_weather", "description": "d",
                                                   "parameters": gemini_schema},
                                                  {"name": "raw", "parametersJsonSchema": WEATHER}]},
                        {"googleSearch": {}}],
                 generationConfig={"temperature": 0.3, "topP": 0.9, "topK": 5, "maxOutputTokens": 77,
                                   "stopSequences": ["END"], "responseMimeType": "application/json",
                                   "responseSchema": {"type": "OBJECT", "properties": {}},
                                   "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True}})
    assert req.tools == [
        Tool("get_weather", "d", {"type": "object", "required": ["city"], "properties": {
            "city": {"type": ["string", "null"]}, "days": {"type": "array", "items": {"type": "integer"}}}}),
        Tool("raw", "", WEATHER)]
    assert (req.temperature, req.top_p, req.top_k, req.max_tokens, req.stop) == (0.3, 0.9, 5, 77, ["END"])
    assert req.response_format == ResponseFormat("json_schema", "response", {"type": "object", "properties": {}})
    assert req.reasoning == Reasoning(budget_tokens=2048)


@pytest.mark.parametrize("config,expected", [
    ({"responseMimeType": "application/json"}, ResponseFormat("json_object")),
    ({"responseMimeType": "application/json", "responseJsonSchema": WEATHER},
     ResponseFormat("json_schema", "response", WEATHER, strict=None)),
    ({"responseMimeType": "text/plain"}, None),
])
def test_json_mode_in(config, expected):
    assert decode(generationConfig=config).response_format == expected


@pytest.mark.parametrize("thinking,expected", [
    ({"thinkingBudget": 0}, None),
    ({"thinkingBudget": -1}, Reasoning("medium")),
    ({"thinkingLevel": "low"}, Reasoning("low")),
    ({"thinkingLevel": "HIGH"}, Reasoning("high")),
    ({"includeThoughts": True}, None),
])
def test_thinking_in(thinking, expected):
    assert decode(generationConfig={"thinkingConfig": thinking}).reasoning == expected


@pytest.mark.parametrize("body", [
    {},
    {"contents": "hi"},
    {"contents": [{"role": "system", "parts": [{"text": "x"}]}]},
    {"contents": [{"role": "user", "parts": "x"}]},
])
def test_malformed_requests_are_400(body):
    with pytest.raises(ProtocolError) as exc:
        proto.model_of(body, "m")
        proto.decode_request(body)
    assert exc.value.status == 400


# ---------------------------------------------------------------- upstream: request encoding


def unified(*messages, **fields):
    return Request(model="m", messages=list(messages), **fields)


def test_encode_contents_names_results_merges_turns_and_marks_foreign_calls():
    req = unified(
        Message("user", [Part("text", text="weather?"), Part("image", url="https://x/a.webp"),
                         Part("image", data=PNG, media_type="image/png")]),
        Message("assistant", [Part("reasoning", text="unsigned"),
                              Part("reasoning", text="claude's", signature=proof(
                                  "anthropic", block={"type": "thinking", "thinking": "claude's", "signature": "s"})),
                              Part("text", text="checking"),
                              Part("tool_call", id="toolu_1", name="get_weather", arguments='{"city":"Paris"}'),
                              Part("tool_call", id="toolu_2", name="get_time", arguments="")]),
        Message("tool", [Part("tool_result", id="toolu_1", content=[Part("text", text="18C")])]),
        Message("tool", [Part("tool_result", id="toolu_2", is_error=True,
                              content=[Part("text", text="no"), Part("image", data=PNG, media_type="image/png")])]),
        Message("user", [Part("text", text="and?")]),
        system=[Part("text", text="one"), Part("text", text="two")])
    body = proto.encode_request(req, "gemini-x")
    assert body["systemInstruction"] == {"parts": [{"text": "one"}, {"text": "two"}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "weather?"}, {"fileData": {"mimeType": "image/webp",
                                                                       "fileUri": "https://x/a.webp"}},
                                   {"inlineData": {"mimeType": "image/png", "data": PNG}}]},
        {"role": "model", "parts": [  # reasoning without a Gemini proof is left out
            {"text": "checking"},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
             "thoughtSignature": proto.FOREIGN_SIGNATURE},
            {"functionCall": {"name": "get_time", "args": {}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"output": "18C"}}},
            {"functionResponse": {"name": "get_time", "response": {"error": "no"}}},
            {"inlineData": {"mimeType": "image/png", "data": PNG}},
            {"text": "and?"}]}]
    assert "generationConfig" not in body and "tools" not in body


def test_encode_replays_gemini_proofs_on_the_part_they_came_on():
    req = unified(Message("user", [Part("text", text="go")]),
                  Message("assistant", [Part("reasoning", text="thought text is not sent back",
                                             signature=proof("google", signature="c2ln")),
                                        Part("text", text="checking"),
                                        Part("reasoning", signature=proof("google", signature="Y2FsbA==")),
                                        Part("tool_call", id="c1", name="get_weather", arguments="{}"),
                                        Part("tool_call", id="c2", name="get_time", arguments="{}")]),
                  Message("tool", [Part("tool_result", id="c1", content=[Part("text", text="18C")]),
                                   Part("tool_result", id="c2", content=[Part("text", text="noon")])]))
    assert proto.encode_request(req, "m")["contents"][1] == {"role": "model", "parts": [
        {"text": "checking", "thoughtSignature": "c2ln"},
        {"functionCall": {"name": "get_weather", "args": {}}, "thoughtSignature": "Y2FsbA=="},
        {"functionCall": {"name": "get_time", "args": {}}}]}


def test_encode_mid_conversation_system_message_as_user_text_in_place():
    req = unified(Message("user", [Part("text", text="hi")]), Message("assistant", [Part("text", text="ok")]),
                  Message("system", [Part("text", text="be brief")]), Message("user", [Part("text", text="go")]),
                  system=[Part("text", text="top")])
    body = proto.encode_request(req, "m")
    assert body["systemInstruction"] == {"parts": [{"text": "top"}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]},
                                {"role": "model", "parts": [{"text": "ok"}]},
                                {"role": "user", "parts": [{"text": "System: be brief"}, {"text": "go"}]}]


@pytest.mark.parametrize("choice,expected", [
    (ToolChoice("auto"), {"mode": "AUTO"}),
    (ToolChoice("none"), {"mode": "NONE"}),
    (ToolChoice("required"), {"mode": "ANY"}),
    (ToolChoice("required", "get_weather"), {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
    (None, None),
])
def test_tool_choice_out(choice, expected):
    body = proto.encode_request(unified(tools=[Tool("get_weather", "d", WEATHER), Tool("noargs")],
                                        tool_choice=choice), "m")
    assert body["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "d", "parameters": WEATHER},  # already in Gemini's subset
        {"name": "noargs", "description": ""}]}]
    assert (body.get("toolConfig") or {}).get("functionCallingConfig") == expected


def test_tool_schemas_go_out_in_geminis_subset():
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
              "properties": {"path": {"type": ["string", "null"], "description": "p"}, "mode": {"const": "fast"},
                             "kind": {"oneOf": [{"type": "string"}, {"$ref": "#/$defs/n"}]},
                             "item": {"$ref": "#/$defs/n"},
                             "tags": {"type": "array", "items": {"type": "string", "propertyNames": {}}, "minItems": 1},
                             "n": {"type": "number", "exclusiveMinimum": 0, "maximum": 9}},
              "required": ["path", "ghost"], "$defs": {"n": {"type": "integer", "minimum": 1}}}
    body = proto.encode_request(unified(tools=[Tool("edit", "d", schema)]), "m")
    assert body["tools"][0]["functionDeclarations"] == [{"name": "edit", "description": "d", "parameters": {
        "type": "object", "required": ["path"],
        "properties": {"path": {"type": "string", "nullable": True, "description": "p"},
                       "mode": {"type": "string", "enum": ["fast"]},
                       "kind": {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 1}]},
                       "item": {"type": "integer", "minimum": 1},
                       "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                       "n": {"type": "number", "maximum": 9}}}}]
    assert "parametersJsonSchema" not in json.dumps(body)


@pytest.mark.parametrize("fields,expected", [
    ({"max_tokens": 50, "temperature": 1.5, "top_p": 0.5, "top_k": 3, "stop": ["X"]},
     {"maxOutputTokens": 50, "temperature": 1.5, "topP": 0.5, "topK": 3, "stopSequences": ["X"]}),
    ({"response_format": ResponseFormat("json_schema", schema=WEATHER)},
     {"responseMimeType": "application/json", "responseJsonSchema": WEATHER}),
    ({"response_format": ResponseFormat("json_object")}, {"responseMimeType": "application/json"}),
    ({"reasoning": Reasoning("low")}, {"thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True}}),
    ({"reasoning": Reasoning(budget_tokens=999)}, {"thinkingConfig": {"thinkingBudget": 999, "includeThoughts": True}}),
    ({"stream": True, "user": "u", "parallel_tool_calls": False}, None),
])
def test_generation_config_out(fields, expected):
    assert proto.encode_request(unified(**fields), "m").get("generationConfig") == expected


@pytest.mark.parametrize("base,stream,url", [
    ("https://g.example", False, "https://g.example/v1beta/models/gemini-x:generateContent"),
    ("https://g.example", True, "https://g.example/v1beta/models/gemini-x:streamGenerateContent?alt=sse"),
    ("https://g.example/v1", False, "https://g.example/v1/models/gemini-x:generateContent"),
])
def test_request_url(base, stream, url):
    assert proto.request_url(base, "gemini-x", stream) == url


# ---------------------------------------------------------------- responses both ways

FINISH_IN = [("STOP", (), "stop"), ("STOP", (("f", {}),), "tool_calls"), ("MAX_TOKENS", (), "length"),
             ("SAFETY", (), "content_filter"), ("RECITATION", (), "content_filter"),
             ("PROHIBITED_CONTENT", (), "content_filter"), ("MALFORMED_FUNCTION_CALL", (), "error"),
             ("OTHER", (), "stop")]


@pytest.mark.parametrize("finish,calls,expected", FINISH_IN)
def test_finish_reason_in(finish, calls, expected):
    assert proto.decode_response(gemini_response(calls=calls, finish=finish)).finish_reason == expected


def test_blocked_prompt_is_a_content_filter():
    body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}}
    resp = proto.decode_response(body)
    assert (resp.parts, resp.finish_reason, resp.usage.input) == ([], "content_filter", 4)


@pytest.mark.parametrize("reason,finish", [("stop", "STOP"), ("length", "MAX_TOKENS"), ("tool_calls", "STOP"),
                                           ("content_filter", "SAFETY"), ("error", "OTHER")])
def test_finish_reason_out(reason, finish):
    resp = Response(id="x", model="m", parts=[Part("text", text="t")], finish_reason=reason)
    assert proto.encode_response(resp, "m")["candidates"][0]["finishReason"] == finish


def test_decode_response_parts_ids_and_usage():
    resp = proto.decode_response(gemini_response("answer", calls=[("f", TOOL_ARGS), ("f", {})], thought="mull"))
    assert [(p.kind, p.text or p.name) for p in resp.parts] == [
        ("reasoning", "mull"), ("text", "answer"), ("tool_call", "f"), ("tool_call", "f")]
    assert resp.parts[0].signature == proof("google", signature="c2lnLWZha2U=")
    assert json.loads(resp.parts[2].arguments) == TOOL_ARGS
    assert resp.parts[2].id.startswith("call_") and resp.parts[2].id != resp.parts[3].id
    # promptTokenCount already includes the cached tokens; thoughts come on top of candidates
    assert resp.usage == Usage(input=30, output=7, cache_read=20, reasoning=3)
    assert (resp.id, resp.model) == ("resp-fake", "fake-gemini")


def test_encode_response_parts_and_usage():
    resp = Response(id="msg_1", model="claude", finish_reason="tool_calls", parts=[
        Part("reasoning", text="r", signature="s"), Part("text", text="t"),
        Part("tool_call", id="toolu_1", name="f", arguments='{"a": 1}')],
        usage=Usage(input=35, output=7, cache_read=20, cache_write=5, reasoning=3))
    body = proto.encode_response(resp, "alias")
    # the signature rides on the next call or text part: Gemini CLI drops thought parts from its history
    assert body["candidates"][0]["content"] == {"role": "model", "parts": [
        {"text": "r", "thought": True}, {"text": "t", "thoughtSignature": "s"},
        {"functionCall": {"name": "f", "args": {"a": 1}, "id": "toolu_1"}}]}
    assert body["usageMetadata"] == {"promptTokenCount": 35, "candidatesTokenCount": 4, "totalTokenCount": 42,
                                     "cachedContentTokenCount": 20, "thoughtsTokenCount": 3}
    assert (body["modelVersion"], body["responseId"]) == ("alias", "msg_1")  # the client's name, not "claude"
    calls = Response(id="msg_2", model="claude", finish_reason="tool_calls", parts=[
        Part("text", text="t"), Part("reasoning", signature="s2"), Part("tool_call", id="toolu_2", name="g"),
        Part("reasoning", signature="s3")])
    assert proto.encode_response(calls, "alias")["candidates"][0]["content"]["parts"] == [
        {"text": "t"}, {"functionCall": {"name": "g", "args": {}, "id": "toolu_2"}, "thoughtSignature": "s2"},
        {"text": "", "thoughtSignature": "s3"}]  # nothing after it to carry it


def frames_of(data: bytes) -> list:
    return [json.loads(body) for _, body in sse.Parser().feed(data)]


def test_stream_encoder_sends_calls_whole_and_usage_last():
    enc = proto.StreamEncoder("alias", unified())
    events = [Event("start", id="chatcmpl-1", model="gpt"), Event("reasoning", text="r"), Event("text", text="a"),
              Event("tool_call", index=0, id="call_1", name="f"), Event("tool_args", index=0, text='{"a"'),
              Event("tool_call", index=1, id="call_2", name="g"), Event("tool_args", index=0, text=":1}"),
              Event("finish", reason="stop"), Event("usage", usage=Usage(input=9, output=4, reasoning=1))]
    data = b"".join(enc.event(e) for e in events) + enc.finish_stream()
    assert b"[DONE]" not in data and b"event:" not in data
    frames = frames_of(data)
    assert [f["candidates"][0]["content"]["parts"] for f in frames] == [
        [{"text": "r", "thought": True}], [{"text": "a"}],
        [{"functionCall": {"name": "f", "args": {"a": 1}, "id": "call_1"}},
         {"functionCall": {"name": "g", "args": {}, "id": "call_2"}}]]
    assert ["finishReason" in f["candidates"][0] for f in frames] == [False, False, True]
    assert frames[-1]["candidates"][0]["finishReason"] == "STOP"
    assert frames[-1]["usageMetadata"] == {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 13,
                                           "thoughtsTokenCount": 1}
    # the model the client asked for, never the upstream's "gpt"
    assert {f["modelVersion"] for f in frames} == {"alias"} and {f["responseId"] for f in frames} == {"chatcmpl-1"}


def decoded(frames: list) -> list:
    parser, decoder = sse.Parser(), proto.StreamDecoder()
    return [ev for event, data in parser.feed(b"".join(frames)) for ev in decoder.feed(event, data)]


def test_stream_decoder_text_thoughts_calls_finish_and_usage():
    events = decoded(gemini_frames(("a", "b"), thought="mull"))
    assert [(e.kind, e.text or e.reason) for e in events if e.kind != "usage"] == [
        ("start", ""), ("reasoning", "mull"), ("text", "a"), ("text", "b"), ("finish", "stop")]
    assert events[-1].usage == Usage(input=30, output=7, cache_read=20, reasoning=3)
    calls = decoded(gemini_frames((), calls=[("f", TOOL_ARGS), ("g", {})]))
    assert [(e.kind, e.index, e.name or e.text or e.reason) for e in calls if e.kind not in ("start", "usage")] == [
        ("tool_call", 0, "f"), ("tool_args", 0, json.dumps(TOOL_ARGS)), ("tool_call", 1, "g"),
        ("tool_args", 1, "{}"), ("finish", 0, "tool_calls")]


def test_stream_decoder_raises_on_error_frame():
    with pytest.raises(ProtocolError) as exc:
        decoded(gemini_frames(fail="model overloaded"))
    assert "model overloaded" in str(exc.value)


def test_passthrough_helpers():
    frames = [d for f in gemini_frames() for _, d in sse.Parser().feed(f)]
    assert [proto.is_final("", d) for d in frames] == [False, False, False, True]
    assert proto.stream_usage("", frames[-1]) == Usage(input=30, output=7, cache_read=20, reasoning=3)
    assert proto.stream_usage("", frames[0]) is None  # a content frame's running totals are skipped
    assert proto.stream_usage("", '{"usageMetadata": {"promptTokenCount": 5}}') == Usage(input=5)
    body = {"contents": [], "generationConfig": {"temperature": 1}}
    assert proto.passthrough_body(body, "gemini-x", True) is body


# ---------------------------------------------------------------- through a real server


def chat_tools(req) -> Reply:
    """A chat model that calls the first tool offered, then reports what the tool said (plain only)."""
    body = req.body or {}
    last = body["messages"][-1]
    if last["role"] == "tool":
        return Reply(body=chat_completion("tool said: " + last["content"]))
    if body.get("tools"):
        return Reply(body=chat_completion(None, tool_calls=[{
            "id": "call_fake1", "type": "function",
            "function": {"name": body["tools"][0]["function"]["name"], "arguments": json.dumps(TOOL_ARGS)}}]))
    return Reply(frames=chat_stream()) if body.get("stream") else Reply(body=chat_completion())


DEFAULTS = {"google": gemini_upstream, "anthropic": anthropic_upstream, "openai": chat_tools}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One server over one fake upstream per protocol, shared by the tests below."""
    with Fleet(DEFAULTS) as fleet:
        server = ServerProcess(tmp_path_factory.mktemp("home"), protocol_config(fleet.fakes, "gemini-2.5-flash"))
        yield server, fleet
        server.stop()


@pytest.fixture
def up(world):
    return world[1]


def client(server, version="v1beta"):
    return genai.Client(api_key="client-secret", http_options=types.HttpOptions(
        base_url=server.url, api_version=version, retry_options=types.HttpRetryOptions(attempts=1)))


VERSIONS = pytest.mark.parametrize("version", ["v1beta", "v1"])
WEATHER_TOOL = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="get_weather", description="Weather for a city", parameters_json_schema=WEATHER)])
NO_AUTO = types.AutomaticFunctionCallingConfig(disable=True)


def generate(sdk, stream, contents, model="via-google", **config):
    """One generate call through the SDK; a stream's chunks are folded into one response's parts."""
    cfg = types.GenerateContentConfig(**config)
    if not stream:
        resp = sdk.models.generate_content(model=model, contents=contents, config=cfg)
        return resp.candidates[0].content.parts, resp.candidates[0].finish_reason, resp.usage_metadata
    parts, finish, usage = [], None, None
    for chunk in sdk.models.generate_content_stream(model=model, contents=contents, config=cfg):
        parts += [p for p in chunk.candidates[0].content.parts or [] if p.text or p.function_call]
        finish = chunk.candidates[0].finish_reason or finish
        usage = chunk.usage_metadata or usage
    return parts, finish, usage


@VERSIONS
def test_mock_provider_generate_stream_count_and_listing(server, version):
    sdk = client(server, version)
    resp = sdk.models.generate_content(model="mock:echo", contents="echo me")
    assert resp.text == "echo me" and resp.candidates[0].finish_reason == types.FinishReason.STOP
    assert (resp.usage_metadata.prompt_token_count, resp.usage_metadata.candidates_token_count) == (2, 2)
    chunks = list(sdk.models.generate_content_stream(model="mock:echo", contents="stream me please"))
    assert "".join(c.text or "" for c in chunks) == "stream me please" and len(chunks) == 4
    assert chunks[-1].usage_metadata.total_token_count == 6
    assert sdk.models.count_tokens(model="mock:echo", contents="x" * 400).total_tokens == 101 + 3  # estimate


def test_model_listing_in_gemini_format(server):
    sdk = client(server)
    names = [m.name for m in sdk.models.list()]
    assert "models/via-google" in names and "models/mock:echo" in names
    model = sdk.models.get(model="via-google")
    assert model.name == "models/via-google" and "generateContent" in model.supported_actions
    with pytest.raises(errors.ClientError) as exc:
        sdk.models.get(model="nope")
    assert (exc.value.code, exc.value.status) == (404, "NOT_FOUND")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_passthrough_uses_the_provider_key_and_never_the_clients(server, up, stream):
    requests_before = len(up["google"].received)
    sdk = client(server)
    parts, finish, usage = generate(sdk, stream, "hi")
    assert "".join(p.text for p in parts) == "hello from fake" and finish == types.FinishReason.STOP
    assert (usage.prompt_token_count, usage.cached_content_token_count, usage.thoughts_token_count) == (30, 20, 3)
    # billed from the final totals: 30 in (20 of them cached), 4 + 3 thinking out
    logged = "request google model=via-google upstream=up-google:gemini-2.5-flash status=200 latency="
    wait_until(lambda: any(logged in line and f"tokens=30/7 stream={'yes' if stream else 'no'}" in line
                           for line in server.output().splitlines()), what="the request log line")
    sent = up["google"].received[requests_before]
    action = "streamGenerateContent?alt=sse" if stream else "generateContent"
    assert sent.path == f"/v1beta/models/gemini-2.5-flash:{action}"
    assert sent.headers["x-goog-api-key"] == "key-google"
    assert "client-secret" not in json.dumps(sent.headers) + sent.path
    raw = requests.post(server.url + "/v1beta/models/via-google:generateContent?key=client-secret",
                        json={"contents": [{"parts": [{"text": "hi"}]}]},
                        headers={"authorization": "Bearer client-secret"})
    assert raw.status_code == 200
    sent = up["google"].received[-1]
    assert "key=" not in sent.path and "authorization" not in sent.headers
    assert sent.headers["x-goog-api-key"] == "key-google"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("upstream", ["google", "anthropic", "openai"])
def test_tool_round_trip(server, up, upstream, stream):
    if upstream == "openai" and stream:
        up["openai"].behaviour = lambda req: Reply(frames=_chat_tool_frames(req.body))
    sdk = client(server)
    config = {"model": f"via-{upstream}", "tools": [WEATHER_TOOL], "automatic_function_calling": NO_AUTO}
    question = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")])
    parts, finish, _ = generate(sdk, stream, [question], **config)
    calls = [p.function_call for p in parts if p.function_call]
    assert [(c.name, c.args) for c in calls] == [("get_weather", TOOL_ARGS)]
    assert finish == types.FinishReason.STOP  # Gemini says STOP for a turn that calls functions
    history = [question, types.Content(role="model", parts=parts),
               types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather",
                                                                                   response={"output": "18C"})])]
    parts, finish, _ = generate(sdk, stream, history, **config)
    assert "".join(p.text for p in parts) == "tool said: 18C"
    sent = up[upstream].received[-1].body
    if upstream == "anthropic":  # Anthropic's own call id came back, paired with its result
        assert sent["messages"][1]["content"][0]["id"] == "toolu_fake1"
        assert sent["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_fake1",
                                                   "content": [{"type": "text", "text": "18C"}]}]
    if upstream == "openai":
        assert sent["messages"][-1] == {"role": "tool", "tool_call_id": "call_fake1", "content": "18C"}


def _chat_tool_frames(body: dict) -> list:
    """chat_tools as a stream: the call (or the answer) in one delta, then the finish and [DONE]."""
    last = body["messages"][-1]
    delta = {"content": "tool said: " + last["content"]} if last["role"] == "tool" else {"tool_calls": [
        {"index": 0, "id": "call_fake1", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps(TOOL_ARGS)}}]}
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    done = dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in (chunk, done)] + [b"data: [DONE]\n\n"]


def test_usage_from_anthropic_maps_to_usage_metadata(server):
    sdk = client(server)
    _, _, usage = generate(sdk, False, "hi", model="via-anthropic")
    # Anthropic: 10 fresh + 20 cache reads + 5 cache writes in, 7 out of which 3 thinking
    assert (usage.prompt_token_count, usage.cached_content_token_count, usage.candidates_token_count,
            usage.thoughts_token_count, usage.total_token_count) == (35, 20, 4, 3, 42)


def test_json_mode_reaches_the_upstream(server, up):
    sdk = client(server)
    generate(sdk, False, "hi", model="via-openai", response_mime_type="application/json",
             response_json_schema=WEATHER)
    assert up["openai"].received[-1].body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "response", "schema": WEATHER}}


# ---------------------------------------------------------------- errors


def test_bad_requests_get_google_errors(server):
    bad = requests.post(server.url + "/v1beta/models/via-google:generateContent", json={"contents": "hi"})
    assert bad.status_code == 400
    assert bad.json()["error"]["status"] == "INVALID_ARGUMENT" and "contents" in bad.json()["error"]["message"]
    garbage = requests.post(server.url + "/v1/models/via-google:generateContent", data=b"{oops")
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == 400
    sdk, sdk_v1 = client(server), client(server, "v1")  # a client closes its connections once unreferenced
    with pytest.raises(errors.ClientError) as exc:
        sdk.models.generate_content(model="no-such-model", contents="hi")
    assert (exc.value.code, exc.value.status) == (404, "NOT_FOUND") and "no-such-model" in exc.value.message
    with pytest.raises(errors.ClientError) as exc:
        sdk_v1.models.count_tokens(model="no-such-model", contents="hi")
    assert exc.value.code == 404
    for path in ("/v1beta/models/via-google:embedContent", "/v1beta/cachedContents", "/v1/models/x:predict"):
        resp = requests.post(server.url + path, json={})
        assert resp.status_code == 404 and resp.json()["error"]["status"] == "NOT_FOUND", path
    wrong = requests.get(server.url + "/v1beta/models/via-google:generateContent")
    assert wrong.status_code in (404, 405) and wrong.json()["error"]["code"] == wrong.status_code


def test_upstream_errors_pass_through_with_status_and_message(server, up):
    up["google"].behaviour = lambda req: gemini_error(400, "API key not valid for this model")
    up["anthropic"].behaviour = lambda req: anthropic_error(400, "prompt is too long")
    sdk = client(server)
    with pytest.raises(errors.ClientError) as exc:
        sdk.models.generate_content(model="via-google", contents="hi")
    assert (exc.value.code, exc.value.status, exc.value.message) == (400, "INVALID_ARGUMENT",
                                                                     "API key not valid for this model")
    with pytest.raises(errors.ClientError) as exc:
        sdk.models.generate_content(model="via-anthropic", contents="hi")
    assert (exc.value.code, exc.value.status, exc.value.message) == (400, "INVALID_ARGUMENT", "prompt is too long")


@pytest.mark.parametrize("upstream", ["google", "openai"])
def test_mid_stream_failure_ends_with_an_error_frame(server, up, upstream):
    up[upstream].behaviour = (lambda req: Reply(frames=gemini_frames(fail="model overloaded"))) \
        if upstream == "google" else (lambda req: Reply(frames=chat_stream(), disconnect_after=2))
    sdk = client(server)
    with pytest.raises(errors.APIError) as exc:
        for _ in sdk.models.generate_content_stream(model=f"via-{upstream}", contents="hi"):
            pass
    assert exc.value.code in (502, 503)
    resp = requests.post(server.url + f"/v1beta/models/via-{upstream}:streamGenerateContent?alt=sse",
                         json={"contents": [{"parts": [{"text": "hi"}]}]}, stream=True)
    frames = [line for line in resp.iter_lines() if line]
    assert resp.status_code == 200 and all(f.startswith(b"data: {") for f in frames)
    assert "candidates" in json.loads(frames[0][6:]) and "error" in json.loads(frames[-1][6:])
    assert b"[DONE]" not in b"".join(frames)


def test_gemini_schema_keeps_only_string_constants():
    schema = {"type": "object", "properties": {"on": {"type": "boolean", "const": True},
                                               "n": {"type": "integer", "const": 3}, "s": {"const": "x"}}}
    assert proto.gemini_schema(schema)["properties"] == {"on": {"type": "boolean"}, "n": {"type": "integer"},
                                                          "s": {"type": "string", "enum": ["x"]}}
