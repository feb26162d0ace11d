"""The protocol contract: every protocol is one declared object, and a new one is one file.

tests/ollama_protocol.py (NDJSON, not SSE) is registered and then served and called like
the built-in four: in process through proxy.generate (no WSGI server) and over HTTP by a
`bitrouter serve` process, as a client protocol and as a provider's.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

import ollama_protocol
from conftest import ServerProcess, clean_env
from fakes import FakeUpstream, Reply, chat_completion

from bitrouter import home as home_mod
from bitrouter import protocols, proxy, server
from bitrouter.protocols import Protocol

OLLAMA = ollama_protocol.PROTOCOL  # registered only in the server processes started below
LAUNCHER = [sys.executable, str(Path(__file__).with_name("ollama_protocol.py"))]


@pytest.mark.parametrize("wire", [*protocols.every(), OLLAMA], ids=lambda p: p.name)
def test_every_protocol_declares_the_whole_contract(wire):
    assert isinstance(wire, Protocol) and wire.auth in protocols.AUTH_STYLES
    for member in ("model_of", "wants_stream", "decode_request", "encode_response", "stream_error", "error_body",
                   "usage_of", "stream_usage", "is_final", "passthrough_body", "drop_sealed", "relay_frame",
                   "request_url", "encode_request", "decode_response", "error_message"):
        assert callable(getattr(wire, member)), member
    assert all(callable(getattr(wire.StreamEncoder, m)) for m in ("event", "finish_stream", "error"))
    assert callable(wire.StreamDecoder().feed)
    assert callable(wire.framing.Parser(0).frames) and wire.framing.CONTENT_TYPE
    assert issubclass(wire.framing.FrameTooLarge, ValueError)
    needs = {"count": ("count_request", "count_reply"), "models": ("model_list",), "model": ("model_entry",),
             "generate": (), "unserved": ()}
    for route in wire.routes:
        assert route.kind in proxy.HANDLERS and route.method in ("GET", "POST")
        assert all(callable(getattr(wire, m)) for m in needs[route.kind]), (route, needs[route.kind])
    if wire.count_url is not None:
        assert callable(wire.count_body) and callable(wire.counted)


def test_a_protocol_is_looked_up_by_its_api_protocol_name():
    assert protocols.get("openai").name == "openai" and protocols.get("openai") is protocols.get("openai")
    assert protocols.names() == ["openai", "responses", "anthropic", "google"]
    with pytest.raises(KeyError):
        protocols.get("ollama")  # not registered in this process


def test_the_app_serves_exactly_the_declared_routes(tmp_path):
    with server.Server(home_mod.resolve(home_dir=tmp_path)) as srv:
        served = {(r.method, r.rule) for r in srv.app.routes}
    declared = {(r.method, r.path) for wire in protocols.every() for r in wire.routes}
    assert declared <= served
    assert {rule for _method, rule in served - declared} == {
        "/health", "/admin/routes", "/admin/routes/<name:path>", "/admin/reload", "/admin/metrics",
        "/admin/events", "/metrics"}


def test_the_request_path_runs_in_process_without_a_wsgi_server(tmp_path):
    body = json.dumps({"model": "mock:echo", "messages": [{"role": "user", "content": "hello in process"}]})
    with server.Server(home_mod.resolve(home_dir=tmp_path)) as srv:
        reply = proxy.generate(srv, proxy.Incoming(OLLAMA, body=body.encode()))
        assert reply.status == 200 and reply.headers["x-bitrouter-upstream"] == "mock:echo"
        answer = json.loads(reply.body)
        assert answer["message"]["content"] == "hello in process" and answer["done"] is True
        assert (answer["model"], answer["prompt_eval_count"], answer["eval_count"]) == ("mock:echo", 3, 3)

        streamed = proxy.generate(srv, proxy.Incoming(OLLAMA, body=body.replace('"model"', '"stream": true, "model"').encode()))
        assert streamed.content_type == "application/x-ndjson"
        lines = [json.loads(line) for line in b"".join(streamed.body).splitlines()]
        assert "".join(line["message"]["content"] for line in lines) == "hello in process"
        assert len(lines) == 4 and lines[-1]["done"] and lines[-1]["eval_count"] == 3

        refused = proxy.generate(srv, proxy.Incoming(OLLAMA, body=b'{"model": "mock:echo"}'))
        assert refused.status == 400 and json.loads(refused.body) == {"error": "messages: an array is required"}
        assert srv.metrics.snapshot(10)["totals"]["since_start"]["requests"] == 2  # the refused body never named a model


def ndjson_lines(*texts, model="llama3", usage=(7, 2)):
    """An Ollama stream: one line per piece of text, then the done line."""
    lines = [{"model": model, "message": {"role": "assistant", "content": t}, "done": False} for t in texts]
    lines.append({"model": model, "message": {"role": "assistant", "content": ""}, "done": True,
                  "done_reason": "stop", "prompt_eval_count": usage[0], "eval_count": usage[1]})
    return [json.dumps(line).encode() + b"\n" for line in lines]


def ollama_upstream(req):
    if req.body.get("stream"):
        return Reply(frames=ndjson_lines("hi", " from", " ollama"), stream_type="application/x-ndjson")
    return Reply(body={"model": "llama3", "message": {"role": "assistant", "content": "hi from ollama"},
                       "done": True, "done_reason": "stop", "prompt_eval_count": 7, "eval_count": 2})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A server with the protocol registered: an ollama provider and a chat one, both fakes."""
    home = tmp_path_factory.mktemp("home")
    with FakeUpstream(ollama_upstream) as ollama, FakeUpstream(lambda req: Reply(body=chat_completion())) as chat:
        cfg = {"providers": {"local": {"api_protocol": "ollama", "api_base": ollama.url, "api_key": "ollama-key"},
                             "up-openai": {"derives": "openai", "api_base": chat.url + "/v1", "api_key": "k"}},
               "models": {"llama": {"endpoints": [{"provider": "local", "model_id": "llama3"}]},
                          "gpt": {"endpoints": [{"provider": "up-openai", "model_id": "gpt-x"}]}}}
        srv = ServerProcess(home, cfg, command=[*LAUNCHER, "--home-dir", str(home), "serve"])
        try:
            yield srv, ollama, chat
        finally:
            srv.stop()


def test_a_chat_client_reaches_an_ollama_provider_translated(world):
    srv, ollama, _chat = world
    resp = requests.post(srv.url + "/v1/chat/completions", timeout=10,
                         json={"model": "llama", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "hi from ollama"
    assert resp.json()["usage"]["prompt_tokens"] == 7
    sent = ollama.received[-1]
    assert sent.path == "/api/chat" and sent.body["model"] == "llama3"
    assert sent.headers["authorization"] == "Bearer ollama-key"  # the declared auth style

    streamed = requests.post(srv.url + "/v1/chat/completions", timeout=10, stream=True, json={
        "model": "llama", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    frames = [line[6:] for line in streamed.iter_lines() if line.startswith(b"data: ")]
    assert frames[-1] == b"[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "hi from ollama"


def test_an_ollama_client_passes_through_to_ollama_and_translates_to_chat(world):
    srv, ollama, chat = world
    body = {"model": "llama", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    resp = requests.post(srv.url + "/api/chat", json=body, timeout=10, stream=True)
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert [line["model"] for line in lines] == ["llama"] * 4  # relayed whole, renamed to the client's model
    assert ollama.received[-1].body == {**body, "model": "llama3"}  # only `model` changed

    resp = requests.post(srv.url + "/api/chat", timeout=10,
                         json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.json()["message"]["content"] == "hello from fake" and resp.json()["model"] == "gpt"
    assert chat.received[-1].body["messages"] == [{"role": "user", "content": "hi"}]


def test_errors_on_the_new_protocols_paths_are_in_its_shape(world):
    srv, _ollama, _chat = world
    missing = requests.post(srv.url + "/api/chat", json={"model": "nope", "messages": []}, timeout=10)
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    unknown = requests.post(srv.url + "/api/chat/x", json={}, timeout=10)
    assert unknown.status_code == 404 and "is not served" in unknown.json()["error"]


def test_the_protocol_name_is_refused_where_it_is_not_registered(tmp_path):
    (tmp_path / "bitrouter.yaml").write_text(yaml.safe_dump(
        {"providers": {"local": {"api_protocol": "ollama", "api_base": "http://127.0.0.1:9", "api_key": "k"}}}))
    out = subprocess.run([str(Path(sys.executable).with_name("bitrouter")), "--home-dir", str(tmp_path), "providers"],
                         capture_output=True, text=True, env=clean_env(tmp_path), timeout=30)
    assert out.returncode != 0 and "api_protocol: must be one of openai, responses, anthropic, google" in out.stderr
