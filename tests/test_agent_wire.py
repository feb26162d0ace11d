"""What the agent CLIs send, as HTTP through a real server: each fix the agent matrix needed, pinned down.

These requests carry what Claude Code, Codex and Gemini CLI put on the wire (mid-
conversation system messages, namespaced, freeform and hosted tools, signed reasoning,
schemas Gemini refuses), sent with `requests` so each rule is checked on its own, with
the scripted coding model (coding_model.py) as the provider that enforces it.
"""

import json

import pytest
import requests

from coding_model import PROTOCOL_PATHS, Chat, CodingModel
from conftest import ServerProcess
from fakes import Reply

UPSTREAMS = ("anthropic", "responses", "openai", "google")
SHELL = {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One server with an alias per upstream protocol (`to-<protocol>`), each a reasoning coding model,
    and `failover`: anthropic model A first, then a second anthropic provider B."""
    models = {name: CodingModel(reasoning=True).__enter__() for name in UPSTREAMS + ("spare",)}
    providers, aliases = {}, {}
    for name, model in models.items():
        derives, path = PROTOCOL_PATHS.get(name, PROTOCOL_PATHS["anthropic"])
        providers[f"up-{name}"] = {"derives": derives, "api_base": model.url + path, "api_key": f"key-{name}"}
        if name == "responses":
            providers[f"up-{name}"]["api_protocol"] = "responses"
        aliases[f"to-{name}"] = {"endpoints": [{"provider": f"up-{name}", "model_id": "agent-model"}]}
    aliases["failover"] = {"endpoints": [{"provider": "up-anthropic", "model_id": "agent-model"},
                                         {"provider": "up-spare", "model_id": "agent-model"}]}
    server = ServerProcess(tmp_path_factory.mktemp("wire-home"), {"providers": providers, "models": aliases})
    yield server, models
    server.stop()
    for model in models.values():
        model.__exit__(None, None, None)


@pytest.fixture
def server(world):
    for model in world[1].values():
        model.refusals.clear()
        model.upstream.received.clear()
        model.upstream.behaviour = model.answer
    return world


def messages(server, model, msgs, stream=False, headers=None, **extra):
    body = {"model": model, "max_tokens": 1000, "messages": msgs, "stream": stream,
            "tools": [{"name": "Bash", "input_schema": SHELL}], **extra}
    return requests.post(server.url + "/v1/messages", json=body, headers=headers or {}, timeout=30, stream=stream)


def task(marker="single"):
    return [{"role": "user", "content": f"Run the task. [[{marker}]]"}]


def sse_events(resp) -> list:
    out = []
    for block in resp.text.split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data and data[0] != "[DONE]":
            out.append(json.loads(data[0]))
    return out


# ---------------------------------------------------------------- replies name the client's model


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_anthropic_client_sees_its_own_model_name(server, upstream, stream):
    srv, _ = server
    resp = messages(srv, f"to-{upstream}", task(), stream=stream)
    assert resp.status_code == 200, resp.text
    if stream:
        start = next(e for e in sse_events(resp) if e["type"] == "message_start")
        assert start["message"]["model"] == f"to-{upstream}"
    else:
        assert resp.json()["model"] == f"to-{upstream}"
    assert "agent-model" not in resp.text


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_passthrough_replies_of_every_protocol_name_the_alias(server, stream):
    srv, _ = server
    chat = requests.post(srv.url + "/v1/chat/completions", timeout=30, stream=stream, json={
        "model": "to-openai", "messages": task(), "stream": stream})
    responses = requests.post(srv.url + "/v1/responses", timeout=30, stream=stream, json={
        "model": "to-responses", "input": "hi [[single]]", "stream": stream})
    action = "streamGenerateContent?alt=sse" if stream else "generateContent"
    gemini = requests.post(srv.url + f"/v1beta/models/to-google:{action}", timeout=30, json={
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    for resp, field in ((chat, "model"), (responses, "model"), (gemini, "modelVersion")):
        assert resp.status_code == 200, resp.text
        assert "agent-model" not in resp.text and "gemini-fake" not in resp.text
        bodies = sse_events(resp) if stream else [resp.json()]
        named = [b.get(field) or (b.get("response") or {}).get(field) for b in bodies]
        assert set(filter(None, named)) == {json.loads(resp.request.body).get("model", "to-google")}


# ---------------------------------------------------------------- what Claude Code sends


@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_mid_conversation_system_messages_keep_their_place(server, upstream):
    srv, models = server
    msgs = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
            {"role": "system", "content": "MID-SYSTEM note"}, {"role": "user", "content": "hi [[single]]"}]
    resp = messages(srv, f"to-{upstream}", msgs, headers={"anthropic-beta": "mid-conversation-system-2026-04-07"})
    assert resp.status_code == 200, resp.text
    sent = models[upstream].received[-1].body
    text = json.dumps(sent)
    assert text.index("MID-SYSTEM") > text.index('"ok"') and text.index("MID-SYSTEM") < text.index("[[single]]")
    if upstream == "openai":
        assert {"role": "system", "content": "MID-SYSTEM note"} in sent["messages"]
    elif upstream == "responses":
        assert any(i.get("role") == "developer" and "MID-SYSTEM" in json.dumps(i) for i in sent["input"])


def test_anthropic_beta_goes_only_to_anthropic_upstreams(server):
    srv, models = server
    beta = {"anthropic-beta": "context-management-2025-06-27"}
    messages(srv, "to-openai", task(), headers=beta, context_management={"edits": []})
    messages(srv, "to-anthropic", task(), headers=beta, context_management={"edits": []})
    assert "anthropic-beta" not in models["openai"].received[-1].headers
    assert "context_management" not in models["openai"].received[-1].body
    assert models["anthropic"].received[-1].headers["anthropic-beta"] == beta["anthropic-beta"]


def test_claude_code_metadata_and_effort_map_to_the_target(server):
    srv, models = server
    user_id = json.dumps({"device_id": "d" * 64, "session_id": "sess-42"})
    messages(srv, "to-responses", task(), metadata={"user_id": user_id}, thinking={"type": "adaptive"},
             output_config={"effort": "high"})
    sent = models["responses"].received[-1].body
    assert sent["prompt_cache_key"] == "sess-42"
    assert len(sent["safety_identifier"]) <= 64 and "sess-42" not in sent["safety_identifier"]
    assert sent["reasoning"] == {"effort": "high"} and sent["include"] == ["reasoning.encrypted_content"]
    assert "metadata" not in sent and "output_config" not in sent and "thinking" not in sent


# ---------------------------------------------------------------- what Codex sends


CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {
        "cmd": {"type": "string"}}, "required": ["cmd"], "additionalProperties": False}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "sub-agents", "tools": [
        {"type": "function", "name": "spawn_agent", "description": "spawn", "parameters": {
            "type": "object", "properties": {"task": {"type": "string"}}, "required": ["task"]}}]},
    {"type": "custom", "name": "apply_patch", "description": "Apply a patch", "format": {
        "type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
    {"type": "web_search", "external_web_access": True},
]


def codex_request(model, stream=False, **extra):
    return {"model": model, "stream": stream, "store": False, "include": ["reasoning.encrypted_content"],
            "reasoning": {"summary": "auto"}, "prompt_cache_key": "thread-1", "tools": CODEX_TOOLS,
            "client_metadata": {"x-codex-turn-metadata": "{}"},
            "input": [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be safe"}]},
                      {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]}],
            **extra}


def namespaced_caller(req):
    """A Chat provider whose model calls the flattened namespaced tool and the freeform one."""
    turn = {"reasoning": "", "proof": "", "text": "", "calls": [
        ("call_ns", "multi_agent_v1__spawn_agent", {"task": "t"}), ("call_patch", "apply_patch", {"input": "*** Begin"})]}
    if req.body.get("stream"):
        return Reply(frames=Chat.frames(turn, req.body))
    return Reply(body=Chat.body(turn, req.body))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_codex_tools_are_flattened_and_restored(server, stream):
    srv, models = server
    models["openai"].upstream.behaviour = namespaced_caller
    resp = requests.post(srv.url + "/v1/responses", json=codex_request("to-openai", stream), timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-bitrouter-dropped-tools"] == "web_search"
    sent = models["openai"].received[-1].body
    names = [t["function"]["name"] for t in sent["tools"]]
    assert names == ["exec_command", "multi_agent_v1__spawn_agent", "apply_patch"]
    assert sent["tools"][2]["function"]["parameters"]["required"] == ["input"]
    assert "client_metadata" not in sent and "store" not in sent and "include" not in sent
    assert sent["messages"][0] == {"role": "system", "content": "be safe"}
    if stream:
        items = [e["item"] for e in sse_events(resp) if e["type"] == "response.output_item.done"]
    else:
        items = resp.json()["output"]
    assert {"type": "function_call", "namespace": "multi_agent_v1", "name": "spawn_agent",
            "call_id": "call_ns"}.items() <= items[0].items()
    assert {"type": "custom_tool_call", "name": "apply_patch", "call_id": "call_patch",
            "input": "*** Begin"}.items() <= items[1].items()


def test_codex_history_with_custom_and_namespaced_calls_translates(server):
    srv, models = server
    body = codex_request("to-anthropic")
    body["input"] += [
        {"type": "function_call", "namespace": "multi_agent_v1", "name": "spawn_agent", "call_id": "c1",
         "arguments": "{\"task\": \"t\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "spawned"},
        {"type": "custom_tool_call", "name": "apply_patch", "call_id": "c2", "input": "*** Begin"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "patched"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "more [[single]]"}]}]
    resp = requests.post(srv.url + "/v1/responses", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    sent = models["anthropic"].received[-1].body
    uses = [b for m in sent["messages"] for b in m["content"] if isinstance(b, dict) and b["type"] == "tool_use"]
    assert [(u["name"], u["input"]) for u in uses] == [("multi_agent_v1__spawn_agent", {"task": "t"}),
                                                      ("apply_patch", {"input": "*** Begin"})]
    assert "web_search" not in json.dumps(sent)


# ---------------------------------------------------------------- what Gemini refuses


def test_tool_schemas_are_cleaned_for_gemini(server):
    srv, models = server
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
              "additionalProperties": False, "propertyNames": {"pattern": "^[a-z]+$"},
              "properties": {"command": {"type": ["string", "null"]}, "mode": {"const": "fast"},
                             "count": {"type": "integer", "exclusiveMinimum": 0},
                             "target": {"$ref": "#/$defs/target"}},
              "required": ["command", "ghost"], "$defs": {"target": {"type": "string", "enum": ["a", "b"]}}}
    body = {"model": "to-google", "input": "run [[single]]",
            "tools": [{"type": "function", "name": "shell", "parameters": schema}]}
    resp = requests.post(srv.url + "/v1/responses", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    sent = models["google"].received[-1].body["tools"][0]["functionDeclarations"][0]["parameters"]
    assert sent == {"type": "object", "required": ["command"], "properties": {
        "command": {"type": "string", "nullable": True}, "mode": {"type": "string", "enum": ["fast"]},
        "count": {"type": "integer"}, "target": {"type": "string", "enum": ["a", "b"]}}}


# ---------------------------------------------------------------- reasoning provenance


def shell_turn(srv, model, items):
    return requests.post(srv.url + "/v1/responses", timeout=30, json={
        "model": model, "input": items, "store": False,
        "tools": [{"type": "function", "name": "shell_command", "parameters": SHELL}]})


def test_a_proof_goes_back_only_to_the_endpoint_that_made_it(server):
    """Turn 2 fails over to another provider: A's signature must not reach it; turn 3 is A's again."""
    srv, models = server
    ask = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go [[sequential]]"}]}
    first = shell_turn(srv, "failover", [ask])
    assert first.headers["x-bitrouter-upstream"] == "up-anthropic:agent-model", first.text
    reasoning, call = (next(i for i in first.json()["output"] if i["type"] == kind)
                       for kind in ("reasoning", "function_call"))
    assert reasoning["encrypted_content"].startswith("br1.")  # sealed with its producer
    history = [ask, reasoning, call, {"type": "function_call_output", "call_id": call["call_id"], "output": "agent-1"}]
    models["anthropic"].upstream.behaviour = lambda req: Reply(status=529, body={
        "type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    second = shell_turn(srv, "failover", history)
    assert second.status_code == 200, second.text
    assert second.headers["x-bitrouter-upstream"] == "up-spare:agent-model"
    assert not models["spare"].refusals
    sent = models["spare"].received[-1].body
    assert "thinking" not in json.dumps(sent["messages"]) and "thinking" not in sent  # dropped, and thinking off
    models["anthropic"].upstream.behaviour = models["anthropic"].answer
    returned = models["anthropic"].returned
    third = shell_turn(srv, "to-anthropic", history)
    assert third.status_code == 200, third.text
    assert models["anthropic"].returned == returned + 1  # its own signature came back, unsealed


def test_a_seal_naming_another_endpoint_is_never_unsealed(server):
    srv, models = server
    from bitrouter.protocols import proof, seal
    forged = seal(proof("anthropic", block={"type": "thinking", "thinking": "x", "signature": "stolen"}),
                  "up-spare:agent-model")
    msgs = [*task(), {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "x", "signature": forged},
        {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]
    resp = messages(srv, "to-openai", msgs)
    assert resp.status_code == 200, resp.text
    assert "stolen" not in json.dumps(models["openai"].received[-1].body)


# ---------------------------------------------------------------- token counts


@pytest.mark.parametrize("upstream,path", [("anthropic", "/v1/messages/count_tokens"),
                                           ("responses", "/responses/input_tokens"),
                                           ("google", ":countTokens")])
def test_token_counts_come_from_the_providers_counter_and_are_cached(server, upstream, path):
    srv, models = server
    body = {"model": f"to-{upstream}", "messages": [{"role": "user", "content": "count me " * 50}]}
    first = requests.post(srv.url + "/v1/messages/count_tokens", json=body, timeout=30)
    second = requests.post(srv.url + "/v1/messages/count_tokens", json=body, timeout=30)
    counted = [r for r in models[upstream].received if path in r.path]
    assert len(counted) == 1  # the second answer came from the cache
    assert first.json() == second.json() == {"input_tokens": len(json.dumps(counted[0].body)) // 4}


def test_token_counts_fall_back_to_the_estimate(server):
    srv, models = server
    body = {"model": "to-openai", "messages": [{"role": "user", "content": "estimate me " * 50}]}
    chat = requests.post(srv.url + "/v1/messages/count_tokens", json=body, timeout=30)
    assert chat.status_code == 200 and chat.json()["input_tokens"] > 100  # Chat has no counter: estimated
    models["anthropic"].upstream.behaviour = lambda req: Reply(status=500, body={"type": "error", "error": {}})
    body["model"] = "to-anthropic"
    broken = requests.post(srv.url + "/v1/messages/count_tokens", json=body, timeout=30)
    assert broken.status_code == 200 and broken.json() == chat.json()


def test_usage_carries_cached_and_reasoning_tokens_across_protocols(server):
    srv, _ = server
    resp = requests.post(srv.url + "/v1/chat/completions", timeout=30, json={
        "model": "to-responses", "messages": [{"role": "user", "content": "hi"}]})
    usage = resp.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 20
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 4
    resp = messages(srv, "to-google", task())
    assert resp.json()["usage"]["cache_read_input_tokens"] == 20
    assert resp.json()["usage"]["input_tokens"] == 30  # Anthropic counts cached input apart


@pytest.mark.parametrize("client,upstream", [("responses", "responses"), ("anthropic", "anthropic"),
                                             ("google", "google")])
def test_sealed_proofs_are_dropped_from_a_passthrough(server, client, upstream):
    """A conversation translated before (proofs sealed by a provider of another protocol) now
    routes to a provider of the client's own protocol: the sealed proofs must not reach it."""
    srv, models = server
    from bitrouter.protocols import proof, seal
    sealed = seal(proof("openai", text="chat reasoning"), "up-openai:agent-model")
    if client == "responses":
        url, body = "/v1/responses", {"model": "to-responses", "store": False, "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": sealed},
            {"type": "function_call", "call_id": "c1", "name": "shell_command", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}
    elif client == "anthropic":
        url, body = "/v1/messages", {"model": "to-anthropic", "max_tokens": 100, "thinking": {
            "type": "enabled", "budget_tokens": 1024}, "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "chat reasoning", "signature": sealed},
                                              {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]}
    else:
        url, body = "/v1beta/models/to-google:generateContent", {"contents": [
            {"role": "user", "parts": [{"text": "go"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "run", "args": {}}, "thoughtSignature": sealed}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "run", "response": {"output": "ok"}}}]}]}
    resp = requests.post(srv.url + url, json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    sent = json.dumps(models[upstream].received[-1].body)
    assert "br1." not in sent and not models[upstream].refusals
    if client == "anthropic":
        assert '"thinking"' not in sent  # the tool-use turn lost its thinking, so thinking is off


@pytest.mark.parametrize("client", ["responses-custom", "google"])
def test_loops_of_every_call_kind_are_seen(tmp_path, client):
    """The loop guard skips decoding bodies with too few calls: Codex's custom calls and
    Gemini's functionCall parts must still count as calls."""
    home = tmp_path / "home"
    home.mkdir()
    srv = ServerProcess(home, {"guardrails": {"loop": {"warn_after": 3, "stop_after": 4}}})
    try:
        if client == "google":
            turns = [{"role": "user", "parts": [{"text": "fix it"}]}]
            for _ in range(4):
                turns += [{"role": "model", "parts": [{"functionCall": {"name": "run", "args": {"c": "make"}}}]},
                          {"role": "user", "parts": [{"functionResponse": {"name": "run", "response": {"output": "x"}}}]}]
            resp = requests.post(srv.url + "/v1beta/models/mock:echo:generateContent", json={"contents": turns},
                                 timeout=10)
        else:
            items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix it"}]}]
            for n in range(4):
                items += [{"type": "custom_tool_call", "call_id": f"c{n}", "name": "apply_patch", "input": "*** same"},
                          {"type": "custom_tool_call_output", "call_id": f"c{n}", "output": "failed"}]
            resp = requests.post(srv.url + "/v1/responses", timeout=10, json={
                "model": "mock:echo", "input": items, "tools": [{"type": "custom", "name": "apply_patch"}]})
        assert resp.status_code == 400, resp.text
        assert "BitRouter stopped this agent session" in resp.text
    finally:
        srv.stop()
