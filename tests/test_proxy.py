"""The proxy core through a real server process: routing, failover, streaming, errors."""

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from conftest import free_port, run_cli, wait_until
from fakes import FakeUpstream, Reply, chat_completion, chat_stream, error, openai_chat


def upstream_config(*fakes, strategy="priority", **alias):
    """Providers up0, up1... deriving openai and pointing at fakes, plus an alias `fast` over them."""
    providers = {f"up{i}": {"derives": "openai", "api_base": f.url + "/v1", "api_key": f"key-{i}"}
                 for i, f in enumerate(fakes)}
    endpoints = [{"provider": f"up{i}", "model_id": f"m{i}"} for i in range(len(fakes))]
    return {"providers": providers,
            "models": {"fast": {"strategy": strategy, "endpoints": endpoints, **alias}}}


def chat(server, model="fast", stream=False, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}
    return requests.post(server.url + "/v1/chat/completions", json=body, timeout=30, stream=stream)


@pytest.fixture
def two_fakes():
    with FakeUpstream(openai_chat) as a, FakeUpstream(openai_chat) as b:
        yield a, b


# ---------------------------------------------------------------- pass-through and headers


def test_passthrough_keeps_unknown_fields_and_rewrites_model(start_server, fake_openai):
    server = start_server(upstream_config(fake_openai))
    resp = chat(server, vendor_extension={"keep": True})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-bitrouter-upstream"] == "up0:m0"
    assert resp.headers["x-bitrouter-attempts"] == "1"
    assert float(resp.headers["x-bitrouter-overhead-ms"]) >= 0
    sent = fake_openai.received[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "m0"
    assert sent.body["vendor_extension"] == {"keep": True}
    assert sent.headers["authorization"] == "Bearer key-0"
    assert resp.json()["choices"][0]["message"]["content"] == "hello from fake"


def test_query_string_is_ignored(start_server):
    server = start_server()
    resp = requests.post(server.url + "/v1/chat/completions?beta=true",
                         json={"model": "mock:echo", "messages": [{"role": "user", "content": "q s"}]})
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "q s"


def test_streaming_passthrough_relays_frames_and_asks_for_usage(start_server, fake_openai):
    server = start_server(upstream_config(fake_openai))
    resp = chat(server, stream=True)
    assert resp.headers["content-type"].startswith("text/event-stream")
    frames = [line for line in resp.iter_lines() if line]
    assert frames[-1] == b"data: [DONE]"
    text = "".join((json.loads(f[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                   for f in frames[:-1])
    assert text == "hello from fake"
    assert fake_openai.received[-1].body["stream_options"] == {"include_usage": True}


# ---------------------------------------------------------------- resolution


def test_resolution_order_dynamic_then_direct_then_alias(start_server, two_fakes):
    a, b = two_fakes
    cfg = upstream_config(a, b)
    cfg["models"]["up0:shadowed"] = {"endpoints": [{"provider": "up1", "model_id": "via-alias"}]}
    server = start_server(cfg)
    assert chat(server, "fast").headers["x-bitrouter-upstream"] == "up0:m0"
    # provider:model_id wins over an alias spelled the same way; the id may hold ':' and '/'
    assert chat(server, "up0:shadowed").headers["x-bitrouter-upstream"] == "up0:shadowed"
    assert chat(server, "up1:org/model:tag").headers["x-bitrouter-upstream"] == "up1:org/model:tag"
    assert b.received[-1].body["model"] == "org/model:tag"
    # a dynamic route beats both
    added = requests.post(server.url + "/admin/routes",
                          json={"model": "fast", "endpoints": ["up1:dyn"]})
    assert added.status_code == 200, added.text
    assert chat(server, "fast").headers["x-bitrouter-upstream"] == "up1:dyn"
    listing = requests.get(server.url + "/admin/routes").json()["routes"]
    assert {"model": "fast", "source": "dynamic"}.items() <= next(r for r in listing if r["model"] == "fast").items()
    assert requests.delete(server.url + "/admin/routes/fast").json()["removed"] is True
    assert chat(server, "fast").headers["x-bitrouter-upstream"] == "up0:m0"
    assert requests.delete(server.url + "/admin/routes/fast").status_code == 404


def test_unknown_model_is_404_with_near_matches(start_server, fake_openai):
    server = start_server(upstream_config(fake_openai))
    resp = chat(server, "fsat")
    assert resp.status_code == 404
    message = resp.json()["error"]["message"]
    assert "'fsat'" in message and "'fast'" in message


def test_bad_dynamic_route_is_400(start_server):
    server = start_server()
    resp = requests.post(server.url + "/admin/routes", json={"model": "x", "endpoints": ["nope:m"]})
    assert resp.status_code == 400
    assert "known provider" in resp.json()["error"]["message"]


def test_models_lists_aliases_and_configured_catalogs(start_server, fake_openai):
    server = start_server(upstream_config(fake_openai))
    ids = [m["id"] for m in requests.get(server.url + "/v1/models").json()["data"]]
    assert ids[0] == "fast"
    assert "mock:echo" in ids
    assert any(i.startswith("up0:") for i in ids)  # up0 inherits openai's catalog
    assert not any(i.startswith("anthropic:") for i in ids)  # no key, not listed


# ---------------------------------------------------------------- failover


@pytest.mark.parametrize("failure", [
    error(500), error(502), error(503), error(504), error(529), error(408), error(429),
    error(401, "bad key"), error(403, "forbidden key"),
    Reply(body={}, delay=3),  # read timeout
])
def test_priority_fails_over_on_retryable_causes(start_server, two_fakes, failure):
    a, b = two_fakes
    a.behaviour = lambda req: failure
    cfg = upstream_config(a, b)
    cfg["upstream"] = {"read_timeout": 1.0}
    server = start_server(cfg)
    resp = chat(server)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-bitrouter-upstream"] == "up1:m1"
    assert resp.headers["x-bitrouter-attempts"] == "2"
    assert len(a.received) == 1 and len(b.received) == 1


def test_connection_refused_fails_over(start_server, fake_openai):
    dead = free_port()
    cfg = upstream_config(fake_openai)
    cfg["providers"]["dead"] = {"derives": "openai", "api_base": f"http://127.0.0.1:{dead}/v1", "api_key": "k"}
    cfg["models"]["fast"]["endpoints"].insert(0, {"provider": "dead", "model_id": "x"})
    server = start_server(cfg)
    resp = chat(server)
    assert resp.status_code == 200
    assert resp.headers["x-bitrouter-upstream"] == "up0:m0"


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_request_errors_are_not_retried_and_pass_through(start_server, two_fakes, status):
    a, b = two_fakes
    a.behaviour = lambda req: error(status, f"upstream says {status}")
    server = start_server(upstream_config(a, b))
    resp = chat(server)
    assert resp.status_code == status
    assert resp.json()["error"]["message"] == f"upstream says {status}"
    assert resp.json()["error"]["type"] == "fake_error"  # same protocol: the body is unchanged
    assert len(b.received) == 0


def test_no_failover_after_the_first_streamed_byte(start_server, two_fakes):
    a, b = two_fakes
    a.behaviour = lambda req: Reply(frames=chat_stream(), disconnect_after=2)
    server = start_server(upstream_config(a, b))
    resp = chat(server, stream=True)
    frames = [line for line in resp.iter_lines() if line]
    assert resp.status_code == 200
    assert "error" in json.loads(frames[-2][6:]) and frames[-1] == b"data: [DONE]"
    assert len(b.received) == 0


def test_stream_that_dies_before_any_byte_fails_over(start_server, two_fakes):
    a, b = two_fakes
    a.behaviour = lambda req: Reply(frames=chat_stream(), disconnect_after=0)
    server = start_server(upstream_config(a, b))
    resp = chat(server, stream=True)
    assert resp.headers["x-bitrouter-upstream"] == "up1:m1"
    assert [line for line in resp.iter_lines() if line][-1] == b"data: [DONE]"


def test_all_failed_maps_status_by_cause(start_server, two_fakes):
    a, b = two_fakes
    a.behaviour = lambda req: error(500)
    b.behaviour = lambda req: error(503, "overloaded")
    cfg = upstream_config(a, b)
    cfg["routing"] = {"cooldown_failures": 100}
    server = start_server(cfg)
    resp = chat(server)
    assert resp.status_code == 503
    assert resp.headers["x-should-retry"] == "false"
    assert resp.headers["x-bitrouter-attempts"] == "2"
    assert "overloaded" in resp.json()["error"]["message"]
    b.behaviour = lambda req: error(502)
    assert chat(server).status_code == 502
    b.behaviour = lambda req: Reply(body={}, delay=3)
    cfg["upstream"] = {"read_timeout": 0.5}


def test_timeouts_give_504(start_server, fake_openai):
    fake_openai.behaviour = lambda req: Reply(body={}, delay=3)
    cfg = upstream_config(fake_openai)
    cfg["upstream"] = {"read_timeout": 0.5}
    server = start_server(cfg)
    assert chat(server).status_code == 504


def test_short_retry_after_on_the_last_endpoint_is_waited_out(start_server, fake_openai):
    replies = iter([error(429, headers={"retry-after": "0.3"}), Reply(body=chat_completion())])
    fake_openai.behaviour = lambda req: next(replies)
    server = start_server(upstream_config(fake_openai))
    resp = chat(server)
    assert resp.status_code == 200
    assert resp.headers["x-bitrouter-attempts"] == "2"


def test_long_retry_after_is_not_waited_and_is_passed_on(start_server, fake_openai):
    fake_openai.behaviour = lambda req: error(429, headers={"retry-after": "30"})
    server = start_server(upstream_config(fake_openai))
    resp = chat(server)
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "30"
    assert len(fake_openai.received) == 1


def test_load_balance_follows_weights_and_fails_over(start_server, two_fakes):
    a, b = two_fakes
    cfg = upstream_config(a, b, strategy="load_balance")
    cfg["models"]["fast"]["endpoints"][1]["weight"] = 3
    server = start_server(cfg)
    for _ in range(40):
        assert chat(server).status_code == 200
    assert (len(a.received), len(b.received)) == (10, 30)
    b.behaviour = lambda req: error(500)
    results = [chat(server) for _ in range(4)]
    assert all(r.status_code == 200 and r.headers["x-bitrouter-upstream"] == "up0:m0" for r in results)


def test_cooldown_skips_a_failing_endpoint_then_probes_it_again(start_server, two_fakes):
    a, b = two_fakes
    a.behaviour = lambda req: error(500)
    server = start_server(upstream_config(a, b, cooldown_failures=2, cooldown_seconds=1))
    for _ in range(2):
        assert chat(server).headers["x-bitrouter-attempts"] == "2"
    assert chat(server).headers["x-bitrouter-attempts"] == "1"  # a is cooling down: skipped
    assert len(a.received) == 2
    a.behaviour = openai_chat
    wait_until(lambda: chat(server).headers["x-bitrouter-upstream"] == "up0:m0", 5, 0.1,
               what="a probe of the recovered endpoint")


def test_per_endpoint_key_and_base_overrides(start_server, two_fakes):
    a, b = two_fakes
    cfg = upstream_config(a)
    cfg["models"]["fast"]["endpoints"][0].update(api_key="override-key", api_base=b.url + "/v1")
    server = start_server(cfg)
    assert chat(server).status_code == 200
    assert len(a.received) == 0
    assert b.received[-1].headers["authorization"] == "Bearer override-key"


# ---------------------------------------------------------------- streaming


def test_first_chunk_reaches_the_client_before_the_upstream_finishes(start_server, fake_openai):
    gate = threading.Event()
    fake_openai.behaviour = lambda req: Reply(frames=chat_stream(), gate=gate)
    server = start_server(upstream_config(fake_openai))
    resp = chat(server, stream=True)
    lines = resp.iter_lines()
    first = next(line for line in lines if line)
    assert b'"role": "assistant"' in first or b'"role":"assistant"' in first
    assert not gate.is_set()  # the upstream is still holding back the rest
    gate.set()
    assert [line for line in lines if line][-1] == b"data: [DONE]"


def test_200_concurrent_streams_complete(start_server, fake_openai):
    fake_openai.behaviour = lambda req: Reply(frames=chat_stream(words=[f" w{i}" for i in range(10)]),
                                              frame_delay=0.01)
    server = start_server(upstream_config(fake_openai))

    def one(i):
        with requests.post(server.url + "/v1/chat/completions", stream=True, timeout=60,
                           json={"model": "fast", "stream": True,
                                 "messages": [{"role": "user", "content": str(i)}]}) as resp:
            frames = [line for line in resp.iter_lines() if line]
        text = "".join((json.loads(f[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                       for f in frames[:-1])
        return resp.status_code, text, frames[-1]
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one, range(200)))
    expected = "".join(f" w{i}" for i in range(10))
    assert all(r == (200, expected, b"data: [DONE]") for r in results)


def test_mock_streams_in_several_chunks(start_server):
    server = start_server()
    resp = chat(server, "mock:echo", stream=True, messages=[{"role": "user", "content": "one two three"}],
                stream_options={"include_usage": True})
    frames = [json.loads(line[6:]) for line in resp.iter_lines() if line and line != b"data: [DONE]"]
    deltas = [f["choices"][0]["delta"].get("content") for f in frames if f["choices"]]
    assert deltas[0] == "" and "".join(d or "" for d in deltas) == "one two three"
    assert len([d for d in deltas if d]) == 3
    assert frames[-1]["usage"]["completion_tokens"] == 3


# ---------------------------------------------------------------- bad input


def test_bad_requests_get_openai_shaped_errors(start_server):
    server = start_server({"server": {"max_body_bytes": 2000}})
    url = server.url + "/v1/chat/completions"
    cases = [
        (requests.post(url, data=b"{not json"), 400, "not valid JSON"),
        (requests.post(url, data=b"[1, 2]"), 400, "JSON object"),
        (requests.post(url, json={"messages": []}), 400, "'model'"),
        (requests.post(url, json={"model": "mock:echo"}), 400, "'messages'"),
        (requests.post(url, json={"model": "mock:echo", "messages": [{"role": "wizard"}]}), 400, "role"),
        (requests.post(url, json={"model": "mock:echo", "messages": [], "pad": "x" * 5000}), 413, "limit"),
        (requests.get(url), 405, ""),
        (requests.get(server.url + "/no/such/path"), 404, ""),
    ]
    for resp, status, words in cases:
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        assert words in resp.json()["error"]["message"]
    assert chat(server, "mock:echo").status_code == 200  # one bad request never affects another


def test_port_in_use_is_a_clear_error(home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (home / "bitrouter.yaml").write_text(f"server:\n  listen: 127.0.0.1:{port}\n")
        result = run_cli(home, "serve")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- the official SDK


def test_openai_sdk_plain_and_streaming(start_server, fake_openai):
    server = start_server(upstream_config(fake_openai))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "hello from fake"
    assert reply.usage.total_tokens == 8
    stream = client.chat.completions.create(model="mock:echo", stream=True,
                                            messages=[{"role": "user", "content": "stream me"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "stream me"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])


def test_reload_applies_new_upstream_timeouts_to_existing_connections(start_server, fake_openai):
    fake_openai.behaviour = lambda req: Reply(body=chat_completion(), delay=1.0)
    cfg = upstream_config(fake_openai)
    cfg["upstream"] = {"read_timeout": 0.3}
    server = start_server(cfg)
    assert chat(server).status_code == 504
    cfg["upstream"] = {"read_timeout": 10}
    cfg["server"] = {"listen": f"127.0.0.1:{server.port}"}
    server.write_config(cfg)
    assert requests.post(server.url + "/admin/reload").status_code == 200
    assert chat(server).status_code == 200


def test_a_rejected_provider_key_shows_in_status_and_the_log(start_server, two_fakes, home):
    a, b = two_fakes
    a.behaviour = lambda req: error(401, "Incorrect API key provided")
    server = start_server(upstream_config(a, b))
    assert chat(server).headers["x-bitrouter-upstream"] == "up1:m1"  # failed over
    status = run_cli(home, "status")
    assert "problem:   up0 failing: Incorrect API key provided" in status.stdout, status.stdout
    assert status.returncode == 1  # a rejected key is a problem
    log = (home / "logs" / "bitrouter.log").read_text()
    assert "Incorrect API key provided" in log and "key-0" not in log


def test_an_upstream_echoing_the_key_never_shows_it_to_the_client(start_server, fake_openai):
    fake_openai.behaviour = lambda req: error(400, f"bad request for key {req.headers['authorization'][7:]}")
    cfg = upstream_config(fake_openai)
    cfg["providers"]["up0"]["api_key"] = "sk-very-secret-key-0123456789"
    server = start_server(cfg)
    resp = chat(server)
    assert resp.status_code == 400
    assert "sk-very-secret-key-0123456789" not in resp.text
    assert "sk-v...6789" in resp.json()["error"]["message"]


def test_images_skip_text_only_endpoints_and_are_a_clear_400_when_none_is_left(start_server, two_fakes):
    a, b = two_fakes
    cfg = upstream_config(a, b)
    cfg["providers"]["up0"]["models"] = {"m0": {"modalities": ["text"]}}
    cfg["models"]["text-only"] = {"endpoints": [{"provider": "up0", "model_id": "m0"}]}
    server = start_server(cfg)
    picture = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                            {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]
    resp = chat(server, messages=picture)
    assert resp.headers["x-bitrouter-upstream"] == "up1:m1" and len(a.received) == 0
    resp = chat(server, "text-only", messages=picture)
    assert resp.status_code == 400
    assert "does not accept images" in resp.json()["error"]["message"]
    assert chat(server, "text-only").status_code == 200  # text still goes to it


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"model": "mock:echo", "messages": [{"role": "assistant", "tool_calls": ["x"]}]}),
    ("/v1/chat/completions", {"model": "mock:echo", "messages": [{"role": "user", "content": "x"}], "tools": ["x"]}),
    ("/v1/messages", {"model": "mock:echo", "max_tokens": 5, "tool_choice": "auto",
                      "messages": [{"role": "user", "content": "x"}]}),
    ("/v1/messages/count_tokens", {"model": "mock:echo", "messages": [{"role": "user", "content": [7]}]}),
])
def test_fields_of_the_wrong_shape_are_400_not_500(start_server, path, body):
    server = start_server()
    resp = requests.post(server.url + path, json=body)
    assert resp.status_code == 400, resp.text
    assert "internal error" not in resp.text
