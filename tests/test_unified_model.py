"""The unified model's own rules: closed part kinds, image vs file, the finish rule, the option types."""

import pytest

from bitrouter import boundary
from bitrouter.protocols import (EFFORT_BUDGET, PART_KINDS, Event, Message, Part, Reasoning, Request, ResponseFormat,
                                 ToolChoice, finish_reason, get, media, media_part)

PROTOCOLS = ["openai", "responses", "anthropic", "google"]


@pytest.mark.parametrize("kind", ["picture", "document", "", "Text"])
def test_a_part_of_an_unknown_kind_cannot_be_built(kind):
    with pytest.raises(ValueError, match="is not one of"):
        Part(kind)


def test_the_part_kinds_are_a_closed_set():
    assert PART_KINDS == {"text", "image", "file", "tool_call", "tool_result", "reasoning"}


def test_an_event_of_an_unknown_kind_cannot_be_built():
    with pytest.raises(ValueError, match="is not one of"):
        Event("done")
    assert Event("tool_args", index=1, text="{").kind == "tool_args"


@pytest.mark.parametrize("media_type", ["application/pdf", "text/plain", "audio/wav"])
def test_an_image_part_cannot_carry_another_media_type(media_type):
    with pytest.raises(ValueError, match="it is a file"):
        Part("image", data="x", media_type=media_type)
    assert Part("file", data="x", media_type=media_type).kind == "file"


@pytest.mark.parametrize("media_type, file, kind", [
    ("image/png", False, "image"), ("image/png", True, "image"),  # an image is an image, whatever carries it
    ("application/pdf", False, "file"), ("text/plain", False, "file"),
    ("", False, "image"),  # an image URL of unknown type
    ("", True, "file"),  # a document or file block of unknown type
])
def test_media_type_decides_image_or_file_then_the_container(media_type, file, kind):
    assert media(media_type, url="https://x/y", file=file).kind == kind


@pytest.mark.parametrize("url, kind, media_type, data", [
    ("data:image/jpeg;base64,QUJD", "image", "image/jpeg", "QUJD"),
    ("data:application/pdf;base64,UERG", "file", "application/pdf", "UERG"),
    ("data:;base64,QUJD", "image", "image/png", "QUJD"),  # the default type
    ("https://x/cat.png", "image", "", ""),
])
def test_media_parts_from_urls(url, kind, media_type, data):
    part = media_part(url)
    assert (part.kind, part.media_type, part.data) == (kind, media_type, data)


@pytest.mark.parametrize("reason, calls, expected", [
    (None, False, "stop"), ("stop", False, "stop"),
    (None, True, "tool_calls"), ("stop", True, "tool_calls"),  # the rule
    ("length", True, "length"), ("content_filter", True, "content_filter"), ("error", True, "error"),
    ("tool_calls", False, "tool_calls"),
])
def test_the_finish_rule(reason, calls, expected):
    assert finish_reason(reason, calls) == expected


# What each protocol's decoder is given for a reply that made a tool call but "just stopped".
STOPPED_WITH_A_CALL = {
    "openai": {"choices": [{"message": {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
                            "finish_reason": "stop"}]},
    "responses": {"status": "completed", "output": [{"type": "function_call", "call_id": "c", "name": "f"}]},
    "anthropic": {"content": [{"type": "tool_use", "id": "c", "name": "f", "input": {}}], "stop_reason": "end_turn"},
    "google": {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {}}}]},
                               "finishReason": "STOP"}]},
}


@pytest.mark.parametrize("name", PROTOCOLS)
def test_every_decoder_applies_the_finish_rule(name):
    assert get(name).decode_response(STOPPED_WITH_A_CALL[name]).finish_reason == "tool_calls"


@pytest.mark.parametrize("reasoning, effort, budget", [
    (Reasoning("high"), "high", 24576),
    (Reasoning("minimal"), "minimal", 512),
    (Reasoning("xhigh"), "xhigh", None),  # an effort without a budget of its own: no thinking for budget APIs
    (Reasoning(budget_tokens=1024), "low", 1024),
    (Reasoning(budget_tokens=8000), "medium", 8000),
    (Reasoning(budget_tokens=16384), "high", 16384),
    (Reasoning("low", budget_tokens=9000), "low", 9000),  # each side keeps what was asked
])
def test_reasoning_as_effort_and_as_budget(reasoning, effort, budget):
    assert (reasoning.as_effort(), reasoning.as_budget()) == (effort, budget)


def test_one_effort_budget_table_serves_both_budget_apis():
    req = Request(model="m", messages=[Message("user", [Part("text", text="x")])], max_tokens=30000,
                  reasoning=Reasoning("minimal"))
    assert get("google").encode_request(req, "m")["generationConfig"]["thinkingConfig"]["thinkingBudget"] == \
        EFFORT_BUDGET["minimal"]
    assert get("anthropic").encode_request(req, "m")["thinking"]["budget_tokens"] == 1024  # Anthropic's least


def test_a_named_tool_choice_is_forced():
    assert ToolChoice("required", "f").forced and ToolChoice("required").forced
    assert not ToolChoice("auto").forced and not ToolChoice("none").forced


@pytest.mark.parametrize("request_, message", [
    (Request("m", [], reasoning=Reasoning(budget_tokens="x")), "request.reasoning.budget_tokens has the wrong type"),
    (Request("m", [], reasoning=Reasoning(effort=5)), "request.reasoning.effort has the wrong type"),
    (Request("m", [], response_format=ResponseFormat("json_schema", schema=[])), "request.response_format.schema"),
    (Request("m", [], response_format=ResponseFormat("json_schema", strict="yes")), "response_format.strict"),
    (Request("m", [], tool_choice=ToolChoice("required", 7)), "request.tool_choice.name has the wrong type"),
    (Request("m", [], tool_choice=ToolChoice("sometimes")), "tool_choice.mode is not one of auto, none, required"),
])
def test_the_boundary_checks_the_option_types_as_decoded(request_, message):
    with pytest.raises(boundary.Invalid, match=message):
        boundary.check_fields(request_)


@pytest.mark.parametrize("name, body", [
    ("openai", {"model": "m", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": 3}),
    ("anthropic", {"model": "m", "messages": [], "thinking": {"type": "enabled", "budget_tokens": "lots"}}),
    ("responses", {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "schema": "s"}}}),
    ("google", {"contents": [], "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                                                                         "allowedFunctionNames": [5]}}}),
])
def test_client_options_of_the_wrong_type_are_refused_after_decoding(name, body):
    with pytest.raises(boundary.Invalid):
        boundary.check_fields(get(name).decode_request(body))
