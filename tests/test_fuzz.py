"""Fuzzing the four inbound protocols through a real server: valid bodies mutated at every JSON path.

Whatever the mutation, BitRouter itself never answers 500, every error is in the caller's
protocol shape, and the server keeps answering. Bounded: a fixed number of examples
(derandomized, so a run is repeatable), each a single loopback request.
"""

import json
import os

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ServerProcess
from fakes import Fleet, anthropic_upstream, gemini_upstream, openai_chat, openai_responses

DEFAULT_EXAMPLES = 250  # about 5 s; BITROUTER_FUZZ_EXAMPLES=5000 explores further (and randomly)
EXAMPLES = int(os.environ.get("BITROUTER_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
UPSTREAMS = ("chat", "responses", "anthropic", "google")
MODELS = ["mock:echo"] + [f"via-{name}" for name in UPSTREAMS]

BODIES = {
    "chat": {"model": "M", "stream": False, "temperature": 0.5, "max_tokens": 10, "stop": ["x"],
             "reasoning_effort": "low", "response_format": {"type": "json_object"},
             "messages": [{"role": "system", "content": "s"},
                          {"role": "user", "content": [{"type": "text", "text": "hi"},
                                                       {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
                          {"role": "assistant", "content": None, "tool_calls": [
                              {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
                          {"role": "tool", "tool_call_id": "c1", "content": "r"}],
             "tools": [{"type": "function", "function": {"name": "f", "description": "d",
                                                         "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}],
             "tool_choice": "auto"},
    "responses": {"model": "M", "stream": False, "instructions": "s", "max_output_tokens": 10,
                  "reasoning": {"effort": "low"}, "text": {"format": {"type": "text"}},
                  "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                            {"type": "function_call_output", "call_id": "c1", "output": "r"}],
                  "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]},
    "anthropic": {"model": "M", "max_tokens": 10, "stream": False, "system": [{"type": "text", "text": "s"}],
                  "thinking": {"type": "enabled", "budget_tokens": 1024},
                  "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                               {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                                                  "input": {"a": 1}}]},
                               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                             "content": "r"}]}],
                  "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "auto"}},
    "google": {"contents": [{"role": "user", "parts": [{"text": "hi"}]},
                            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]},
                            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"r": 1}}}]}],
               "systemInstruction": {"parts": [{"text": "s"}]},
               "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object"}}]}],
               "generationConfig": {"maxOutputTokens": 10, "temperature": 0.5,
                                    "thinkingConfig": {"thinkingBudget": 100}}},
}
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "anthropic": "/v1/messages"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    behaviours = {"chat": openai_chat, "responses": openai_responses, "anthropic": anthropic_upstream,
                  "google": gemini_upstream}
    with Fleet(behaviours) as fleet:
        bases = {"chat": ("openai", "/v1"), "responses": ("openai", "/v1"), "anthropic": ("anthropic", ""),
                 "google": ("google", "")}
        providers = {f"up-{n}": {"derives": bases[n][0], "api_base": fleet[n].url + bases[n][1], "api_key": f"key-{n}"}
                     for n in UPSTREAMS}
        providers["up-responses"]["api_protocol"] = "responses"
        models = {f"via-{n}": {"endpoints": [f"up-{n}:model-{n}"]} for n in UPSTREAMS}
        server = ServerProcess(tmp_path_factory.mktemp("fuzz-home"), {"providers": providers, "models": models})
        yield server
        server.stop()


def json_paths(node, prefix=()):
    """Every path into a JSON document (the root included)."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from json_paths(child, prefix + (key,))


def mutated(body, path, action, value):
    """A copy of body with the node at path replaced, deleted or wrapped in an array."""
    body = json.loads(json.dumps(body))
    if not path:
        return value if action == "replace" else [body]
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "delete":
        del parent[key]
    elif action == "wrap":
        parent[key] = [parent[key]]
    else:
        parent[key] = value
    return body


@st.composite
def requests_to_send(draw):
    protocol = draw(st.sampled_from(sorted(BODIES)))
    model = draw(st.sampled_from(MODELS))
    stream = draw(st.booleans())
    body = json.loads(json.dumps(BODIES[protocol]).replace('"M"', json.dumps(model)))
    if protocol != "google":
        body["stream"] = stream
    path = draw(st.sampled_from(list(json_paths(body))))
    action = draw(st.sampled_from(["replace", "replace", "delete", "wrap"]))
    value = draw(json_values)
    if protocol == "google":
        url = f"/v1beta/models/{model}:{'streamGenerateContent?alt=sse' if stream else 'generateContent'}"
    else:
        url = PATHS[protocol]
    return protocol, url, mutated(body, path, action, value)


def error_message(protocol: str, body) -> str:
    if protocol == "anthropic":
        assert body["type"] == "error"
    if protocol == "google":
        assert isinstance(body["error"]["code"], int)
    return body["error"]["message"]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES == DEFAULT_EXAMPLES, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=requests_to_send())
def test_mutated_bodies_never_get_a_500_and_errors_keep_the_protocol_shape(fuzz_server, case):
    protocol, url, body = case
    data = json.dumps(body).encode("utf-8", "surrogatepass")
    resp = requests.post(fuzz_server.url + url, data=data, headers={"content-type": "application/json"}, timeout=30)
    text = resp.content.decode("utf-8", "replace")
    assert resp.status_code != 500, text
    assert "internal error" not in text, text
    if resp.status_code >= 400:
        assert error_message(protocol, resp.json()), text


def test_the_server_still_answers_after_the_fuzzing(fuzz_server):
    resp = requests.post(fuzz_server.url + "/v1/chat/completions",
                         json={"model": "via-anthropic", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert resp.status_code == 200, resp.text
    metrics = requests.get(fuzz_server.url + "/admin/metrics", timeout=10).json()
    assert metrics["running"] == []  # every record closed
