"""Hostile or careless clients and upstreams, through a real server: nothing lost, nothing leaked, no 500."""

import email.utils
import json
import signal
import socket
import sqlite3
import stat
import time

import anthropic
import openai
import pytest
import requests

from conftest import ServerProcess, run_cli, wait_until
from fakes import (Fleet, Reply, anthropic_frames, anthropic_upstream, chat_completion, chat_stream,
                   gemini_upstream, openai_chat)

LONG_KEY = "sk-long-provider-secret-0123456789"
SHORT_KEYS = {"anthropic": "ak1", "google": "gk2"}  # short keys must be masked too
LIMITS = {"header_timeout": 1.0, "body_timeout": 1.0, "idle_timeout": 5.0, "max_body_bytes": 100_000}
UPSTREAM_LIMITS = {"max_body_bytes": 200_000, "max_frame_bytes": 50_000}
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with Fleet({"openai": openai_chat, "backup": openai_chat, "anthropic": anthropic_upstream,
                "google": gemini_upstream}) as fleet:
        home = tmp_path_factory.mktemp("hostile-home")
        providers = {
            "up-openai": {"derives": "openai", "api_base": fleet["openai"].url + "/v1", "api_key": LONG_KEY},
            "up-backup": {"derives": "openai", "api_base": fleet["backup"].url + "/v1", "api_key": "key-b"},
            "up-anthropic": {"derives": "anthropic", "api_base": fleet["anthropic"].url,
                             "api_key": SHORT_KEYS["anthropic"]},
            "up-google": {"derives": "google", "api_base": fleet["google"].url, "api_key": SHORT_KEYS["google"]},
        }
        models = {"via-openai": {"endpoints": ["up-openai:m"]}, "via-anthropic": {"endpoints": ["up-anthropic:m"]},
                  "via-google": {"endpoints": ["up-google:gemini-x"]},
                  "failover": {"endpoints": ["up-openai:m", "up-backup:m"]}}
        srv = ServerProcess(home, {"providers": providers, "models": models, "server": LIMITS,
                                   "upstream": UPSTREAM_LIMITS})
        yield srv, fleet
        srv.stop()


def post(server, path, body, headers=None, stream=False):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(server.url + path, data=data, stream=stream, timeout=30,
                         headers={"content-type": "application/json", **(headers or {})})


def raw_request(server, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh connection; everything received until the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def spend_requests(home) -> dict:
    """(model, status) -> how many such requests the spend log holds."""
    with sqlite3.connect(home / "bitrouter.db") as db:
        return {(model, status): n for model, status, n in
                db.execute("select model, status, sum(requests) from spend_logs group by model, status")}


def shaped(protocol: str, resp) -> str:
    """The error message, asserting the body is an error in the protocol's own shape."""
    body = resp.json()
    if protocol == "anthropic":
        assert body["type"] == "error", body
    return body["error"]["message"]


# ---------------------------------------------------------------- data loss


def test_hostile_requests_neither_write_spend_nor_block_the_good_ones(server):
    before = spend_requests(server.home)
    hostile = [
        ('{"model": "\\ud800", "messages": []}', {}),  # a lone surrogate: poisoned every later batch
        (json.dumps({"model": "mock:echo\u0000", "messages": USER}), {}),
        (json.dumps({"model": "m" * 5000, "messages": USER}), {}),
        (json.dumps({"model": "mock:echo", "messages": USER}), {"authorization": "Bearer \xff\xfe"}),
    ]
    good = 0
    for i in range(24):
        body, headers = hostile[i % len(hostile)]
        resp = post(server, "/v1/chat/completions", body.encode(), {k: v.encode("latin-1") for k, v in headers.items()})
        assert resp.status_code == 400, resp.text
        assert post(server, "/v1/chat/completions", {"model": "mock:echo", "messages": USER}).status_code == 200
        good += 1
    expected = {**before, ("mock:echo", 200): before.get(("mock:echo", 200), 0) + good}
    wait_until(lambda: spend_requests(server.home).get(("mock:echo", 200)) == expected[("mock:echo", 200)], 10,
               what="every good request's spend")
    assert spend_requests(server.home) == expected  # all good ones, none of the refused


# ---------------------------------------------------------------- keys sent where they must not go


@pytest.mark.parametrize("model", ["up-google:gemini-x/../../../v1/chat/completions#",
                                   "up-google:gemini-x/../../../v1/chat/completions",
                                   "up-google:gemini-x:generateContent?key=attacker&alt=json#",
                                   "up-google:gemini-x%2F..%2Fother"])
def test_gemini_model_ids_cannot_steer_the_upstream_url(world, model):
    server, fleet = world
    fleet.reset()
    resp = post(server, "/v1/chat/completions", {"model": model, "messages": USER})
    assert resp.status_code == 400, resp.text
    assert fleet["google"].received == []


def test_gemini_path_model_with_encoded_slashes_is_refused(world):
    server, fleet = world
    fleet.reset()
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    resp = post(server, "/v1beta/models/up-google:gemini-x%2F..%2F..%2Fv1%2Fchat%2Fcompletions:generateContent", body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"]
    assert fleet["google"].received == []
    ok = post(server, "/v1beta/models/via-google:generateContent", body)
    assert ok.status_code == 200, ok.text
    assert fleet["google"].received[-1].path == "/v1beta/models/gemini-x:generateContent"


def _stream_with_echoed_key(key: str):
    frames = anthropic_frames(words=("partial",))[:3]
    frames.append(b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"key '
                  + key.encode() + b' is invalid"}}\n\n')
    return lambda req: Reply(frames=frames)


@pytest.mark.parametrize("inbound", ["anthropic", "openai"])
def test_a_key_echoed_in_a_streamed_error_is_masked(world, inbound):
    server, fleet = world
    fleet.reset()
    fleet["anthropic"].behaviour = _stream_with_echoed_key(SHORT_KEYS["anthropic"])
    path = "/v1/messages" if inbound == "anthropic" else "/v1/chat/completions"
    resp = post(server, path, {"model": "via-anthropic", "max_tokens": 10, "messages": USER, "stream": True})
    text = resp.content.decode()
    assert resp.status_code == 200
    assert "is invalid" in text or "error" in text
    assert SHORT_KEYS["anthropic"] not in text


def test_short_and_long_keys_are_masked_in_errors_metrics_and_log(world):
    server, fleet = world
    fleet.reset()
    for name, key in (("openai", LONG_KEY), ("anthropic", SHORT_KEYS["anthropic"])):
        fleet[name].behaviour = lambda req, key=key: Reply(
            status=400, body={"type": "error", "error": {"type": "invalid_request_error", "message": f"bad key {key}"}})
    for model in ("via-openai", "via-anthropic"):
        for path in ("/v1/chat/completions", "/v1/messages"):
            resp = post(server, path, {"model": model, "max_tokens": 5, "messages": USER})
            assert resp.status_code == 400
            assert "bad key" in resp.text
            assert LONG_KEY not in resp.text and SHORT_KEYS["anthropic"] not in resp.text
    metrics = requests.get(server.url + "/admin/metrics").text
    log_file = server.home / "logs" / "bitrouter.log"
    # request lines are flushed within daemon.FLUSH_DELAY, not one by one
    log = wait_until(lambda: "bad key" in log_file.read_text() and log_file.read_text(), what="the request lines")
    for text in (metrics, log):
        assert "bad key" in text
        assert LONG_KEY not in text and "bad key ak1" not in text


def test_files_holding_spend_logs_and_config_are_private(start_server, home, tmp_path):
    server = start_server()
    post(server, CHAT, {"model": "mock:echo", "messages": USER})  # a spend row goes through the WAL
    wait_until(lambda: (home / "bitrouter.db-wal").exists() and (home / "bitrouter.db-wal").stat().st_size,
               what="the spend row in the WAL")
    for name in ("bitrouter.db", "bitrouter.db-wal", "bitrouter.db-shm", "logs/bitrouter.log", "run/bitrouter.pid"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    fresh = tmp_path / "fresh"
    fresh.mkdir()  # a --home-dir must exist (the same error for every command)
    result = run_cli(fresh, "init", "--provider", "mock", "--yes", input="")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((fresh / "bitrouter.yaml").stat().st_mode) == 0o600
    for folder in ("run", "logs"):
        assert stat.S_IMODE((home / folder).stat().st_mode) == 0o700, folder


# ---------------------------------------------------------------- never a 500


CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
BAD_BODIES = [
    ("openai", CHAT, '{"model": "mock:echo", "messages": [], "x": ' + "[" * 1000 + "]" * 1000 + "}"),
    ("anthropic", MESSAGES, {"model": "mock:echo", "max_tokens": 5, "messages": USER,
                             "system": [{"type": "text", "text": True}]}),
    ("anthropic", MESSAGES, {"model": "via-openai", "max_tokens": 5, "messages": USER,
                             "thinking": {"type": "enabled", "budget_tokens": "x"}}),
    ("openai", CHAT, {"model": "via-anthropic", "messages": USER, "reasoning_effort": ["x"]}),
    ("openai", CHAT, {"model": "via-anthropic", "messages": USER + [
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": {"a": 1}}}]}]}),
    ("openai", CHAT, {"model": "via-anthropic", "messages": USER + [
        {"role": "assistant", "tool_calls": [{"id": 7, "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]}]}),
    ("openai", CHAT, '{"model": "via-openai", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
    ("openai", CHAT, '{"model": "via-openai", "messages": [], "temperature": Infinity}'),
    ("openai", CHAT, '{"model": "via-openai", "messages": [], "temperature": 1e999}'),
    ("openai", CHAT, {"model": "mock:echo\r\nx-injected: 1", "messages": USER}),
    ("openai", CHAT, b'{"model": "mock:echo", "messages": [], "x": "\xff"}'),
]


@pytest.mark.parametrize("protocol,path,body", BAD_BODIES)
def test_bad_bodies_are_a_400_in_the_callers_shape(world, protocol, path, body):
    server, fleet = world
    fleet.reset()
    resp = post(server, path, body.encode() if isinstance(body, str) else body)
    assert resp.status_code == 400, resp.text
    assert shaped(protocol, resp)
    assert fleet["openai"].received == [] and fleet["anthropic"].received == []


@pytest.mark.parametrize("header", [b"anthropic-beta", b"authorization", b"x-api-key"])
def test_headers_with_bad_bytes_are_a_400_and_never_forwarded(world, header):
    server, fleet = world
    fleet.reset()
    body = json.dumps({"model": "via-anthropic", "max_tokens": 5, "messages": USER}).encode()
    reply = raw_request(server, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n" + header + b": a\xff\x01b\r\n"
                        + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["type"] == "error"
    assert fleet["anthropic"].received == []


@pytest.mark.parametrize("request_bytes,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    # Header lines a smuggler bets two hops read differently (RFC 9112 section 5).
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\n{}", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-A: b\r\n folded: on\r\n\r\n", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-" + b"a" * 70_000 + b": 1\r\n\r\n", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 400),
])
def test_malformed_http_gets_a_json_error(world, request_bytes, status):
    reply = raw_request(world[0], request_bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), reply[:200]
    assert json.loads(body)["error"]["message"]
    assert reply.count(b"HTTP/1.1") == 1  # one answer, not gevent's second one glued on


def test_header_lines_the_rfc_allows_are_read_as_they_mean(world):
    body = json.dumps({"model": "mock:echo", "messages": USER}).encode()
    reply = raw_request(world[0], b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        b"content-type:application/json\r\nContent-Length: %d\r\nCONTENT-LENGTH:  %d \t\r\n"
                        b"X-Empty:\r\n\r\n" % (len(body), len(body)) + body)
    head, _, answer = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply[:300]
    assert json.loads(answer)["choices"][0]["message"]["content"]
    dates = [line[6:].decode() for line in head.split(b"\r\n") if line.lower().startswith(b"date: ")]
    assert len(dates) == 1 and abs(email.utils.parsedate_to_datetime(dates[0]).timestamp() - time.time()) < 5


@pytest.mark.parametrize("query", ["recent=%B2", "recent=" + "9" * 5000, "recent=-1"])
def test_admin_query_parameters_are_checked(world, query):
    resp = requests.get(world[0].url + "/admin/metrics?" + query)
    assert resp.status_code == 400, resp.text


@pytest.mark.parametrize("spec", [{"model": "r", "endpoints": [{"provider": ["up-openai"], "model_id": "m"}]},
                                  {"model": "r", "endpoints": [{"provider": "up-openai", "model_id": {"a": 1}}]},
                                  {"model": "bad\nname", "endpoints": ["up-openai:m"]}])
def test_bad_dynamic_routes_are_a_400(world, spec):
    resp = requests.post(world[0].url + "/admin/routes", json=spec)
    assert resp.status_code == 400, resp.text


@pytest.mark.parametrize("inbound,path", [("openai", CHAT), ("anthropic", MESSAGES)])
@pytest.mark.parametrize("reply", [chat_completion(usage="lots"), {"choices": "none", "usage": {"prompt_tokens": "x"}}])
def test_upstream_replies_of_the_wrong_shape_are_a_502_and_the_record_closes(world, inbound, path, reply):
    server, fleet = world
    fleet.reset()
    fleet["openai"].behaviour = lambda req: Reply(body=reply)
    resp = post(server, path, {"model": "via-openai", "max_tokens": 5, "messages": USER})
    assert resp.status_code == 502, resp.text
    assert shaped(inbound, resp)
    assert requests.get(server.url + "/admin/metrics").json()["running"] == []


# ---------------------------------------------------------------- broken and bounded streams


def _cut_anthropic_stream(req):
    frames = anthropic_frames(words=("hello", " there"))[:4]
    return Reply(frames=frames + [b'event: content_block_delta\ndata: {"type": "content_bl'])


def test_a_cut_pass_through_stream_ends_with_a_whole_error_frame_and_the_sdk_raises(world):
    server, fleet = world
    fleet.reset()
    fleet["anthropic"].behaviour = _cut_anthropic_stream
    resp = post(server, MESSAGES, {"model": "via-anthropic", "max_tokens": 5, "messages": USER, "stream": True})
    text = resp.content.decode()
    assert "content_bl" not in text.replace("content_block", "")  # the partial frame was dropped
    assert text.endswith("\n\n") and "event: error\n" in text
    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.APIError):
        with client.messages.stream(model="via-anthropic", max_tokens=5, messages=USER) as stream:
            for _ in stream:
                pass


def test_a_cut_stream_makes_the_openai_sdk_raise(world):
    server, fleet = world
    fleet.reset()
    frames = chat_stream()
    fleet["openai"].behaviour = lambda req: Reply(frames=frames[:2] + [b'data: {"id": "x", "choi'])
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="via-openai", messages=USER, stream=True):
            pass


def test_an_html_200_stream_fails_over_before_anything_is_sent(world):
    server, fleet = world
    fleet.reset()
    fleet["openai"].behaviour = lambda req: Reply(body=b"<html><body>Sign in to the Wi-Fi</body></html>",
                                                  headers={"content-type": "text/html"})
    resp = post(server, CHAT, {"model": "failover", "messages": USER, "stream": True})
    assert resp.status_code == 200
    assert resp.headers["x-bitrouter-upstream"] == "up-backup:m"
    assert "<html>" not in resp.text and "[DONE]" in resp.text


def test_an_endless_upstream_line_is_cut_at_the_frame_limit(world):
    server, fleet = world
    fleet.reset()
    first = chat_stream()[0]
    fleet["openai"].behaviour = lambda req: Reply(frames=[first, b"data: " + b"x" * 200_000, b"\n\n"])
    resp = post(server, CHAT, {"model": "via-openai", "messages": USER, "stream": True})
    assert resp.status_code == 200
    assert "larger than 50000 bytes" in resp.text
    assert "xxxx" not in resp.text


def test_an_upstream_body_over_the_limit_fails_over(world):
    server, fleet = world
    fleet.reset()
    fleet["openai"].behaviour = lambda req: Reply(body=chat_completion(text="x" * 300_000))
    resp = post(server, CHAT, {"model": "failover", "messages": USER})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-bitrouter-upstream"] == "up-backup:m"
    alone = post(server, CHAT, {"model": "via-openai", "messages": USER})
    assert alone.status_code == 502 and "max_body_bytes" in alone.text


# ---------------------------------------------------------------- slow and idle clients


def test_half_sent_headers_are_cut_off_at_the_header_timeout(world):
    server, _ = world
    started = time.monotonic()
    reply = raw_request(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert time.monotonic() - started < 5  # header_timeout is 1 s; the socket timeout is 10


def test_a_body_that_never_arrives_is_a_408(world):
    server, _ = world
    reply = raw_request(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"body_timeout" in reply


def test_the_connection_closes_after_a_413(world):
    server, _ = world
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n"
    reply = raw_request(server, head + b"x" * 1000)  # returns only once the server hangs up
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"connection: close" in reply.lower()


def test_stop_does_not_wait_for_a_body_that_never_arrives(home):
    server = ServerProcess(home, {"server": {"body_timeout": 60, "drain_timeout": 30}})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 100")  # the server is reading the body now
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(10)  # well before drain_timeout
    finally:
        server.stop()


def test_a_client_that_does_not_read_stops_the_upstream_read(world):
    server, fleet = world
    fleet.reset()
    sent = []
    big = (b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
           b'"delta":{"content":"' + b"x" * 16_000 + b'"},"finish_reason":null}]}\n\n')
    total = 4000  # 64 MB: far more than the socket buffers between the fake and the client hold

    def frames():
        for _ in range(total):
            sent.append(1)
            yield big
    fleet["openai"].behaviour = lambda req: Reply(frames=frames())
    resp = post(server, MESSAGES, {"model": "via-openai", "max_tokens": 5, "messages": USER, "stream": True},
                stream=True)  # translated, with keep-alive pings: the hand-off queue must stay short
    assert resp.status_code == 200
    seen = []

    def settled():  # the count stops growing once every buffer on the way is full
        seen.append(len(sent))
        return len(seen) > 3 and seen[-1] == seen[-4]
    wait_until(settled, 20, interval=0.3, what="the upstream reads to stop")
    resp.close()
    assert len(sent) < total / 2, f"{len(sent)} of {total} frames were read from the upstream"
    wait_until(lambda: not requests.get(server.url + "/admin/metrics").json()["running"],
               what="the abandoned stream's record to close")


def test_a_flood_of_idle_connections_cannot_lock_new_clients_out(home):
    import resource
    import subprocess

    from conftest import BITROUTER, clean_env, free_port
    port = free_port()
    (home / "bitrouter.yaml").write_text(f"server: {{listen: '127.0.0.1:{port}'}}\n")

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    proc = subprocess.Popen([BITROUTER, "--home-dir", str(home), "serve"], env=clean_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=low_limit)
    url = f"http://127.0.0.1:{port}"
    idle = []
    try:
        wait_until(lambda: _answers(url), 20, what="server health")
        for _ in range(400):  # more than the server has file descriptors
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        resp = requests.post(url + "/v1/chat/completions", json={"model": "mock:echo", "messages": USER}, timeout=10)
        assert resp.status_code == 200
        conns = requests.get(url + "/admin/metrics", timeout=10).json()["connections"]
        assert conns["capacity"] == (256 - 64) // 2 and conns["open"] <= conns["capacity"] + 1
    finally:
        for sock in idle:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=1).ok
    except requests.ConnectionError:
        return False


def test_an_allowlist_glob_only_ever_sees_a_validated_model_id(home, start_server):
    from fakes import FakeUpstream
    assert run_cli(home, "account", "-g").returncode == 0
    token = run_cli(home, "keygen", "--models", "fg:gemini-*").stdout.strip()
    with FakeUpstream(gemini_upstream) as fake:
        server = start_server({"providers": {"fg": {"derives": "google", "api_base": fake.url, "api_key": "gk2"}}})
        auth = {"authorization": f"Bearer {token}"}
        for model in ("fg:gemini-x/../../../v1/chat/completions", "fg:gemini-x:generateContent?key=attacker&alt=json#"):
            resp = post(server, CHAT, {"model": model, "messages": USER}, auth)
            assert resp.status_code == 400, resp.text  # the glob would have matched: the id is refused first
        assert fake.received == []
        assert post(server, CHAT, {"model": "fg:gemini-x", "messages": USER}, auth).status_code == 200
        assert fake.received[-1].path == "/v1beta/models/gemini-x:generateContent"
