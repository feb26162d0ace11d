"""Chat Completions <-> unified model: the mapping rules, table-driven."""

import pytest

from bitrouter.protocols import Message, Part, ProtocolError, Reasoning, Request, Response, ToolChoice, chat

PDF = "JVBERi0xLjQK"


def decode(*messages, **body):
    return chat.decode_request({"model": "m", "messages": list(messages), **body})


@pytest.mark.parametrize("messages, expected_system, expected_roles", [
    ([{"role": "system", "content": "a"}, {"role": "developer", "content": "b"},
      {"role": "user", "content": "hi"}], ["a", "b"], ["user"]),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"},
      {"role": "user", "content": "q2"}], [], ["user", "assistant", "user"]),
    ([{"role": "system", "content": [{"type": "text", "text": "block"}]},
      {"role": "user", "content": "x"}], ["block"], ["user"]),
])
def test_system_developer_and_turn_order(messages, expected_system, expected_roles):
    req = decode(*messages)
    assert [p.text for p in req.system] == expected_system
    assert [m.role for m in req.messages] == expected_roles


@pytest.mark.parametrize("content, texts", [("hi", ["hi"]), ("", []), (None, []),
                                             ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], ["a", "b"])])
def test_content_is_a_string_or_an_array_of_parts(content, texts):
    assert [p.text for p in decode({"role": "user", "content": content}).messages[0].parts] == texts


@pytest.mark.parametrize("role", ["user", "system", "assistant", "tool"])
def test_content_of_another_type_is_a_400_naming_the_message(role):
    with pytest.raises(ProtocolError) as info:
        decode({"role": "user", "content": "x"}, {"role": role, "content": 5})
    assert info.value.status == 400 and "messages[1].content: must be a string or an array" in str(info.value)


def test_tool_results_carry_the_name_of_their_call():
    req = decode({"role": "user", "content": "weather?"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                     {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                 {"role": "tool", "tool_call_id": "c2", "content": "noon"},
                 {"role": "tool", "tool_call_id": "c1", "content": "sunny"})
    results = [m.parts[0] for m in req.messages if m.role == "tool"]
    assert [(r.id, r.name, r.content[0].text) for r in results] == [("c2", "get_time", "noon"),
                                                                   ("c1", "get_weather", "sunny")]


@pytest.mark.parametrize("choice, unified", [
    ("auto", ToolChoice("auto")), ("none", ToolChoice("none")), ("required", ToolChoice("required")),
    ({"type": "function", "function": {"name": "f"}}, ToolChoice("required", "f")),
])
def test_tool_choice_both_ways(choice, unified):
    body = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": choice}
    req = decode({"role": "user", "content": "x"}, **body)
    assert req.tool_choice == unified
    assert chat.encode_request(req, "m")["tool_choice"] == choice


def test_images_and_pdfs_both_ways():
    req = decode({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}}]})
    parts = req.messages[0].parts
    assert (parts[0].url, parts[1].media_type, parts[1].data) == ("https://x/cat.png", "image/jpeg", "AAAA")
    assert [p.kind for p in parts] == ["image", "image", "file"]
    assert (parts[2].media_type, parts[2].data) == ("application/pdf", PDF)
    sent = chat.encode_request(req, "m")["messages"][0]["content"]
    assert sent[0] == {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}
    assert sent[1] == {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}
    assert sent[2]["type"] == "file" and sent[2]["file"]["file_data"] == f"data:application/pdf;base64,{PDF}"


@pytest.mark.parametrize("reasoning, effort", [
    (Reasoning("high"), "high"), (Reasoning(budget_tokens=1024), "low"),
    (Reasoning(budget_tokens=8000), "medium"), (Reasoning(budget_tokens=32000), "high"),
])
def test_reasoning_effort_from_effort_or_budget(reasoning, effort):
    req = Request(model="m", messages=[Message("user", [Part("text", text="x")])], reasoning=reasoning)
    assert chat.encode_request(req, "m")["reasoning_effort"] == effort


@pytest.mark.parametrize("body, expected", [
    ({"max_tokens": 5}, 5), ({"max_completion_tokens": 7, "max_tokens": 5}, 7),
])
def test_max_tokens_names(body, expected):
    req = decode({"role": "user", "content": "x"}, **body)
    assert req.max_tokens == expected
    assert chat.encode_request(req, "m")["max_completion_tokens"] == expected


@pytest.mark.parametrize("finish", ["stop", "length", "tool_calls", "content_filter", "error"])
def test_finish_reasons_are_always_valid_chat_values(finish):
    out = chat.encode_response(Response(id="r", model="m", parts=[Part("text", text="t")],
                                          finish_reason=finish), "m")
    assert out["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls", "content_filter")


def test_stop_string_becomes_a_list_and_json_schema_survives():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    req = decode({"role": "user", "content": "x"}, stop="END",
                 response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}})
    assert req.stop == ["END"]
    sent = chat.encode_request(req, "m")
    assert sent["stop"] == ["END"]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}


@pytest.mark.parametrize("data, expected", [
    ('{"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}', None),
    ('{"choices":[{"index":0,"delta":{"content":"\\"usage\\": {"}}]}', None),
    ('{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}', (5, 3)),
    ('{"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}', (7, 2)),
    ("[DONE]", None),
])
def test_stream_usage_comes_from_the_usage_object_only(data, expected):
    usage = chat.stream_usage("", data)
    assert ((usage.input, usage.output) if usage else None) == expected



def test_files_by_bare_base64_are_typed_by_their_name_and_by_file_id_are_a_400():
    part = decode({"role": "user", "content": [
        {"type": "file", "file": {"filename": "notes.txt", "file_data": "SGk="}}]}).messages[0].parts[0]
    assert (part.kind, part.media_type, part.data) == ("file", "text/plain", "SGk=")
    with pytest.raises(ProtocolError, match="file_id needs files stored at OpenAI"):
        decode({"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]})


def test_a_file_by_url_cannot_go_to_a_chat_provider():
    req = Request(model="m", messages=[Message("user", [Part("file", url="https://x/r.pdf",
                                                             media_type="application/pdf")])])
    with pytest.raises(ProtocolError) as info:
        chat.encode_request(req, "m")
    assert info.value.status == 400 and "file by URL" in str(info.value)
