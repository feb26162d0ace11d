"""Hot reload through a real daemon: what changes, what is kept, and zero dropped requests."""

import json
import os
import re
import signal
import threading
import time

import requests

from conftest import wait_until
from fakes import FakeUpstream, Reply, chat_completion, chat_stream
from test_daemon import daemon_home, status_fields  # noqa: F401  (daemon_home is a fixture)


def provider(fake, key="k") -> dict:
    return {"derives": "openai", "api_base": fake.url + "/v1", "api_key": key}


def reload_ok(d) -> str:
    result = d.cli("reload")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("configuration reloaded\n"), result.stdout
    return result.stdout


def test_reload_changes_routing_adds_a_provider_and_changes_keys(daemon_home, home):
    with FakeUpstream(_named("A")) as a, FakeUpstream(_named("B")) as b, FakeUpstream(_named("C")) as c:
        (home / ".env").write_text("A_KEY=key-one\n")
        d = daemon_home({"providers": {"pa": provider(a, "${A_KEY}"), "pb": provider(b)},
                         "models": {"fast": {"endpoints": ["pa:m"]}}})
        d.start()
        assert _text(d.chat("fast")) == "from A"
        assert a.received[-1].headers["authorization"] == "Bearer key-one"
        assert d.chat("pc:m").status_code == 404

        (home / ".env").write_text("A_KEY=key-two\n")
        d.write_config({"providers": {"pa": provider(a, "${A_KEY}"), "pb": provider(b), "pc": provider(c, "kc")},
                        "models": {"fast": {"endpoints": ["pb:m"]}}})
        assert reload_ok(d) == "configuration reloaded\n"
        assert _text(d.chat("fast")) == "from B"
        assert _text(d.chat("pc:m")) == "from C"
        assert c.received[-1].headers["authorization"] == "Bearer kc"
        assert _text(d.chat("pa:m")) == "from A"
        assert a.received[-1].headers["authorization"] == "Bearer key-two"
    assert re.search(r"INFO configuration reloaded \(POST /admin/reload\) in [\d.]+ ms\n", d.log)


def test_a_running_request_finishes_on_the_runtime_it_started_with(daemon_home):
    gate = threading.Event()
    slow_a = lambda req: Reply(frames=chat_stream(words=("from", " A")), gate=gate)  # noqa: E731
    with FakeUpstream(slow_a) as a, FakeUpstream(_named("B")) as b:
        cfg = {"providers": {"pa": provider(a), "pb": provider(b)}, "models": {"fast": {"endpoints": ["pa:m"]}}}
        d = daemon_home(cfg)
        d.start()
        running = d.chat("fast", stream=True)
        assert running.headers["x-bitrouter-upstream"] == "pa:m"
        d.write_config({**cfg, "providers": {"pb": provider(b)}, "models": {"fast": {"endpoints": ["pb:m"]}}})
        reload_ok(d)
        assert _text(d.chat("fast")) == "from B"
        gate.set()
        assert _stream_text(running) == "from A"


def test_a_broken_config_is_rejected_whole_and_the_old_one_keeps_serving(daemon_home, home):
    with FakeUpstream(_named("A")) as a, FakeUpstream(_named("B")) as b:
        cfg = {"providers": {"pa": provider(a), "pb": provider(b)}, "models": {"fast": {"endpoints": ["pa:m"]}}}
        d = daemon_home(cfg)
        pid = d.start()
        added = requests.post(d.url + "/admin/routes", json={"model": "dyn", "endpoints": ["pb:m"]}, timeout=10)
        assert added.status_code == 200, added.text

        # Valid YAML with one bad endpoint: nothing of it (not even the new alias target) applies.
        d.write_config({**cfg, "models": {"fast": {"endpoints": ["pb:m"]}, "bad": {"endpoints": ["zzz9:m"]}}})
        result = d.cli("reload")
        assert result.returncode == 1
        assert result.stderr == ("error: configuration not reloaded (the previous one keeps serving): "
                                 f"{d.config_file}: models.bad.endpoints[0].provider: unknown provider 'zzz9'\n")
        assert _text(d.chat("fast")) == "from A"
        assert "ERROR configuration reload (POST /admin/reload) failed" in d.log

        d.config_file.write_text("models: [unclosed\n")
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "ERROR configuration reload (SIGHUP) failed" in d.log, what="the SIGHUP reload")
        assert _text(d.chat("fast")) == "from A"
        assert "invalid YAML (line 2)" in d.log

        d.write_config({**cfg, "models": {"fast": {"endpoints": ["pb:m"]}}})
        reload_ok(d)
        assert _text(d.chat("fast")) == "from B"
        assert _text(d.chat("dyn")) == "from B", "dynamic routes survive a reload"
        assert d.pid() == pid


def test_reload_signs_in_with_the_active_account_once_tokens_are_required(daemon_home, home):
    d = daemon_home()
    assert d.cli("account", "-g").returncode == 0  # an account makes the server require tokens
    d.start()
    refused = requests.post(d.url + "/admin/reload", timeout=10)
    assert refused.status_code == 401
    d.write_config({"models": {"renamed": {"endpoints": ["mock:echo"]}}})
    assert reload_ok(d) == "configuration reloaded\n"
    assert "configuration reloaded (POST /admin/reload)" in d.log


def test_reload_reports_listen_and_database_changes_as_needing_a_restart(daemon_home):
    d = daemon_home()
    d.start()
    d.write_config({"server": {"listen": "127.0.0.1:1"}, "database": {"url": "sqlite:///elsewhere.db"},
                    "models": {"echo": {"endpoints": ["mock:echo"]}}})
    assert reload_ok(d) == ("configuration reloaded\n"
                            f"note: server.listen changed to 127.0.0.1:1; the server keeps 127.0.0.1:{d.port} "
                            f"until `bitrouter --home-dir {d.home} restart`\n"
                            "note: database.url changed to sqlite:///elsewhere.db; the server keeps "
                            f"sqlite:///{d.home / 'bitrouter.db'} until `bitrouter --home-dir {d.home} restart`\n")
    assert d.chat().status_code == 200
    assert status_fields(d.cli("status"))["url"] == d.url


def test_reload_falls_back_to_sighup_when_http_is_unreachable(daemon_home):
    d = daemon_home()
    pid = d.start()
    published = d.pid_file.read_text()
    with open(d.pid_file, "r+") as f:  # same file, so the server keeps its lock; a dead URL
        f.write(published.replace(d.url, "http://127.0.0.1:1"))
    d.write_config({"models": {"renamed": {"endpoints": ["mock:echo"]}}})
    result = d.cli("reload")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("the server did not answer over HTTP (")
    assert f"sent SIGHUP instead. The outcome is logged in {d.logs_dir / 'bitrouter.log'}" in result.stdout
    wait_until(lambda: "configuration reloaded (SIGHUP)" in d.log, what="the SIGHUP reload")
    assert d.chat("renamed").status_code == 200
    assert d.pid() == pid


# ---------------------------------------------------------------- under load


CLIENTS = 50
RELOADS = 5


def test_reload_and_stop_under_load_drop_nothing(daemon_home):
    """50 clients keep streaming and plain requests going through reloads and a stop.

    Every request that reached an upstream must complete, whole; requests refused once the
    daemon stops must never have reached one.
    """
    with FakeUpstream(_slow("A")) as a, FakeUpstream(_slow("B")) as b:
        def config(i):
            target = "pa" if i % 2 == 0 else "pb"
            return {"server": {"drain_timeout": 20},
                    "providers": {"pa": provider(a, f"ka{i}"), "pb": provider(b, f"kb{i}")},
                    "models": {"fast": {"endpoints": [f"{target}:m"]}}}
        d = daemon_home(config(0))
        d.start()
        load = _Load(d.url, CLIENTS)
        load.start()
        try:
            wait_until(lambda: load.ok >= CLIENTS, 30, what="the first requests")
            reload_seconds = []
            for i in range(1, RELOADS + 1):
                d.write_config(config(i))
                clock = time.monotonic()
                reload_ok(d)
                reload_seconds.append(time.monotonic() - clock)
                done = load.ok
                wait_until(lambda: load.ok >= done + CLIENTS, 30, what="requests after a reload")
            in_flight_at_stop = load.in_flight
            load.stopping.set()
            clock = time.monotonic()
            stopped = d.cli("stop")
            stop_seconds = time.monotonic() - clock
        finally:
            load.halt()
        received = {json.loads(r.body["messages"][0]["content"])["id"] for r in a.received + b.received}

    assert stopped.returncode == 0, stopped.stderr
    assert load.failures == [], load.failures[:5]
    assert load.running == 0
    assert in_flight_at_stop >= CLIENTS // 2
    assert received <= load.completed, "a request reached an upstream but did not complete"
    assert not received & load.refused
    assert load.streams >= CLIENTS and load.plain >= CLIENTS
    server_ms = [float(m) for m in re.findall(r"configuration reloaded \(POST /admin/reload\) in ([\d.]+) ms", d.log)]
    drained = float(re.search(r"server stopped; drained in ([\d.]+)s", d.log).group(1))
    print(f"\n{len(load.completed)} requests ({load.streams} streams) completed, {len(load.refused)} refused "
          f"after stop; {in_flight_at_stop} in flight at stop; reload CLI {min(reload_seconds):.2f}-"
          f"{max(reload_seconds):.2f}s, server-side {min(server_ms):.1f}-{max(server_ms):.1f} ms; "
          f"stop {stop_seconds:.2f}s (drain {drained:.2f}s)")


class _Load:
    """Client threads that each send request after request until halted, checking every reply."""

    def __init__(self, url: str, clients: int):
        self.url = url + "/v1/chat/completions"
        self.clients = clients
        self.stopping = threading.Event()  # after this, refused connections are expected
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.completed, self.refused, self.failures = set(), set(), []
        self.streams = self.plain = self.in_flight = 0
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    @property
    def ok(self) -> int:
        return len(self.completed)

    @property
    def running(self) -> int:
        return sum(t.is_alive() for t in self.threads)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def halt(self) -> None:
        self._halt.set()
        for t in self.threads:
            t.join(30)

    def _client(self, index: int) -> None:
        session = requests.Session()
        n = 0
        while not self._halt.is_set():
            n += 1
            rid, stream = f"c{index}-{n}", (index + n) % 2 == 0
            body = {"model": "fast", "stream": stream,
                    "messages": [{"role": "user", "content": json.dumps({"id": rid})}]}
            with self._lock:
                self.in_flight += 1
            try:
                outcome = self._one(session, body, rid, stream)
            finally:
                with self._lock:
                    self.in_flight -= 1
            if outcome == "refused":
                return

    def _one(self, session, body, rid: str, stream: bool) -> str:
        try:
            resp = session.post(self.url, json=body, stream=stream, timeout=30)
        except requests.ConnectionError as exc:  # nothing was answered: never started
            if self.stopping.is_set():
                with self._lock:
                    self.refused.add(rid)
                return "refused"
            self._fail(rid, f"connection failed before the stop: {exc}")
            return "failed"
        try:
            if resp.status_code != 200:
                self._fail(rid, f"HTTP {resp.status_code}: {resp.text[:200]}")
                return "failed"
            name = {"pa:m": "A", "pb:m": "B"}[resp.headers["x-bitrouter-upstream"]]
            text = _stream_text(resp) if stream else _text(resp)
        except Exception as exc:  # a broken stream or body: exactly what must never happen
            self._fail(rid, f"reply broke: {exc!r}")
            return "failed"
        if text != _expected(name, rid):
            self._fail(rid, f"wrong or truncated reply: {text!r}")
            return "failed"
        with self._lock:
            self.completed.add(rid)
            self.streams += stream
            self.plain += not stream
        return "ok"

    def _fail(self, rid: str, why: str) -> None:
        with self._lock:
            self.failures.append((rid, why))


def _expected(name: str, rid: str) -> str:
    return f"{name} answers {rid}" + "".join(f" w{i}" for i in range(6))


def _slow(name: str):
    """Replies tagged with the fake's name and the request id: streams of 11 frames 30 ms apart."""
    def behaviour(req):
        rid = json.loads(req.body["messages"][0]["content"])["id"]
        text = _expected(name, rid)
        if req.body.get("stream"):
            words = [text.split(" w")[0]] + [f" w{i}" for i in range(6)]
            return Reply(frames=chat_stream(words=words), frame_delay=0.03)
        return Reply(body=chat_completion(text), delay=0.2)
    return behaviour


def _named(name: str):
    return lambda req: Reply(body=chat_completion(f"from {name}"))


def _text(resp) -> str:
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


def _stream_text(resp) -> str:
    """The streamed content; raises unless the stream ended with [DONE]."""
    assert resp.status_code == 200, resp.text
    parts, done = [], False
    for line in resp.iter_lines():
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            done = True
            continue
        for choice in json.loads(line[6:])["choices"]:
            parts.append(choice["delta"].get("content") or "")
    if not done:
        raise AssertionError(f"stream ended without [DONE] after {''.join(parts)!r}")
    return "".join(parts)


def test_dynamic_routes_are_checked_like_aliases(start_server):
    """One endpoint validator: a boolean weight or an endpoint key is refused, never dropped quietly."""
    server = start_server()
    def add(endpoint):
        return requests.post(server.url + "/admin/routes", timeout=10, json={"model": "x", "endpoints": [endpoint]})
    bool_weight = add({"provider": "mock", "model_id": "echo", "weight": True})
    assert bool_weight.status_code == 400 and "endpoints[0].weight: must be a positive integer" in bool_weight.text
    keyed = add({"provider": "mock", "model_id": "echo", "api_key": "sk-own-key-12345"})
    assert keyed.status_code == 400 and "api_key and api_base belong in bitrouter.yaml" in keyed.text
    assert "sk-own-key-12345" not in keyed.text
    typo = requests.post(server.url + "/admin/routes", timeout=10,
                         json={"model": "x", "strategy": "load-balance", "endpoints": ["mock:echo"]})
    assert typo.status_code == 400 and ("strategy: must be one of priority, load_balance, got 'load-balance' "
                                        "(did you mean 'load_balance'?)") in typo.text
    empty = requests.post(server.url + "/admin/routes", timeout=10, json={"model": "x", "endpoints": []})
    assert empty.status_code == 400 and "endpoints: must be a non-empty list" in empty.text
    assert add("mock:echo").status_code == 200
