"""Several instances on one database agree: budgets, revocations, dynamic routes, usage.

The agreement tests run on two deployments: two servers with their own homes (as on two hosts;
the second trusts the first's issuer) and one `server.workers: 2` server, each over one
PostgreSQL database and over one SQLite file. Requests go out on fresh connections, so
with workers the kernel spreads them over both processes. The workers' own supervision
(totals, restarts, reload, drain) and a PostgreSQL outage have tests of their own below.
"""

import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import ServerProcess, run_cli, wait_until
from fakes import FakeUpstream, Reply, chat_completion

from bitrouter import accounts
from bitrouter import home as home_mod

BODY = {"model": "up:gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


class Deployment:
    """Two entry points (`urls`) over one database, and the home whose account mints tokens."""

    def __init__(self, servers, home, urls):
        self.servers = servers
        self.home = home
        self.urls = urls

    def cli(self, *args):
        result = run_cli(self.home, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def token(self, *args) -> str:
        return self.cli("keygen", "--exp", "1h", *args)


@pytest.fixture(scope="module")
def upstream():
    """An OpenAI-compatible fake that takes 300 ms, so concurrent requests are in flight together."""
    with FakeUpstream(lambda req: Reply(body=chat_completion(), delay=0.3)) as fake:
        yield fake


@pytest.fixture(scope="module", params=[("two instances", "sqlite"), ("two instances", "postgres"),
                                        ("two workers", "sqlite"), ("two workers", "postgres")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def deployment(request, tmp_path_factory, upstream):
    """One deployment per kind and database, shared by this module's agreement tests."""
    shape, backend = request.param
    tmp = tmp_path_factory.mktemp("cluster")
    url = f"sqlite:///{tmp / 'shared.db'}" if backend == "sqlite" else \
        request.getfixturevalue("pg_cluster").database()
    first = tmp / "a"
    first.mkdir()
    assert run_cli(first, "account", "-g").returncode == 0
    issuer = accounts.list_accounts(home_mod.resolve(home_dir=first))[0].caip10
    cfg = {"database": {"url": url}, "auth": {"mode": "on", "trusted_issuers": [issuer]},
           "providers": {"up": {"derives": "openai", "api_base": upstream.url + "/v1", "api_key": "k"}}}
    if shape == "two workers":
        servers = [supervised(first, cfg)]
        urls = [servers[0].url] * 2
    else:
        second = tmp / "b"
        second.mkdir()
        servers = [ServerProcess(first, cfg), ServerProcess(second, cfg)]
        urls = [s.url for s in servers]
    yield Deployment(servers, first, urls)
    for server in servers:
        assert server.stop() == 0, server.output()


def supervised(home, cfg) -> ServerProcess:
    """A `server.workers: 2` server, once every worker listens (the supervisor has published its URL)."""
    server = ServerProcess(home, {**cfg, "server": {"workers": 2}})
    pid_file = home / "run" / "bitrouter.pid"
    wait_until(lambda: pid_file.exists() and len(pid_file.read_text().splitlines()) == 4, 20,
               what="the supervisor to publish its URL")
    return server


def chat(url, token, model="up:gpt-4o"):
    with requests.Session() as fresh:  # a new connection each time: workers share the load
        return fresh.post(url + "/v1/chat/completions", json={**BODY, "model": model},
                          headers={"authorization": f"Bearer {token}"}, timeout=30)


def test_a_rounds_budget_holds_across_instances_and_usage_adds_up(deployment, upstream):
    token = deployment.token("--budget-range", "rounds:10", "--name", "shared")
    urls = deployment.urls
    sent = len(upstream.received)
    with ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(lambda i: chat(urls[i % 2], token).status_code, range(40)))
    granted = statuses.count(200)
    assert statuses.count(402) == 40 - granted
    # docs/auth.md: each instance holds its own rounds; the overrun is bounded by what the
    # other instance had in flight, which its own holds cap at 10: never more than 2 x 10.
    assert 10 <= granted <= 20, statuses
    assert len(upstream.received) - sent == granted
    # A request after the burst sees everything that was granted, on either instance.
    for url in urls:
        assert chat(url, token).status_code == 402
    # Every instance's rows, 40 + the 2 checks, each instance writing its own within 200 ms.
    report = wait_until(lambda: (lambda out: re.search(r"shared\s+up:gpt-4o\s+42\b", out) and out)(
        deployment.cli("usage", "--by", "token")), 5, 0.1, what="usage to add up every instance's spend")
    # The granted requests' tokens (the fake reports 5 in, 3 out); refusals add none.
    assert re.search(rf"shared\s+up:gpt-4o\s+42\s+{5 * granted}\s+{3 * granted}\b", report), report


def test_a_token_revoked_through_one_instance_is_refused_by_the_other_within_a_second(deployment):
    token = deployment.token("--name", "laptop")
    assert chat(deployment.urls[1], token).status_code == 200
    deployment.cli("keys", "--rm", "laptop")  # through the first home: the database and its .keys
    revoked = time.monotonic()
    wait_until(lambda: chat(deployment.urls[1], token).status_code == 401, 1.0, 0.01,
               what="the other instance to refuse the revoked token")
    assert time.monotonic() - revoked < 1.0
    # Every later request, on every instance, is refused.
    assert [chat(url, token).status_code for url in deployment.urls * 5] == [401] * 10


def test_a_dynamic_route_added_on_one_instance_is_served_by_the_other(deployment):
    admin = {"authorization": f"Bearer {deployment.token('--scope', 'admin')}"}
    token = deployment.token()
    first, second = deployment.urls
    added = requests.post(first + "/admin/routes", json={"model": "team", "endpoints": ["up:gpt-4o"]},
                          headers=admin, timeout=10)
    assert added.status_code == 200, added.text
    wait_until(lambda: all(chat(second, token, "team").status_code == 200 for _ in range(4)), 2.0,
               what="the other instance to serve the new route")
    listing = requests.get(second + "/admin/routes", headers=admin, timeout=10).json()["routes"]
    assert {"model": "team", "source": "dynamic"}.items() <= next(r for r in listing if r["model"] == "team").items()
    assert requests.delete(first + "/admin/routes/team", headers=admin, timeout=10).status_code == 200
    wait_until(lambda: all(chat(second, token, "team").status_code == 404 for _ in range(4)), 2.0,
               what="the other instance to drop the removed route")


def test_workers_share_totals_and_a_crashed_worker_is_replaced(tmp_path, upstream):
    home = tmp_path / "w"
    home.mkdir()
    server = supervised(home, {"providers": {
        "up": {"derives": "openai", "api_base": upstream.url + "/v1", "api_key": "k"}}})
    try:
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda i: chat(server.url, None).status_code, range(24))) == {200}

        def metrics():
            return requests.get(server.url + "/admin/metrics", timeout=5).json()
        # Whichever worker answers, the totals are over both (each publishes its own every second).
        answers = wait_until(lambda: [m for m in (metrics() for _ in range(6))
                                      if m["totals"]["since_start"]["requests"] == 24], 5, 0.2,
                             what="totals over both workers")
        workers = answers[0]["workers"]
        assert len(workers) == 2 and sum(w["requests"] for w in workers) == 24
        assert all(w["requests"] > 0 for w in workers), workers  # the kernel spread the connections
        status = wait_until(lambda: (lambda out: "requests:  24 since start (0 failed)" in out and out)(
            run_cli(home, "status").stdout), 10, 0.2, what="status totals over both workers")
        assert re.search(r"workers:\s+0: pid \d+, \d+ requests, 1: pid \d+, \d+ requests", status), status
        victim = workers[0]["pid"]
        os.kill(victim, signal.SIGKILL)

        def replaced():
            try:
                found = metrics().get("workers", [])
            except requests.ConnectionError:  # queued on the killed worker's socket: reset by the kernel
                return False
            return [w for w in found if w["index"] == workers[0]["index"] and w["pid"] != victim]
        wait_until(replaced, 15, 0.1, what="a new worker in the dead one's place")
        assert set(chat(server.url, None).status_code for _ in range(10)) == {200}
        assert f"worker {workers[0]['index']} (pid {victim}) exited with code -9" in server.output()
    finally:
        assert server.stop() == 0
    assert "supervisor stopped" in server.output()


def test_workers_reload_together_and_drain_on_stop(tmp_path):
    home = tmp_path / "w"
    home.mkdir()
    release = threading.Event()

    def slow_when_asked(req):
        if req.body and req.body["messages"][0]["content"] == "slow":
            release.wait(20)
        return Reply(body=chat_completion())

    with FakeUpstream(slow_when_asked) as fake:
        cfg = {"providers": {"up": {"derives": "openai", "api_base": fake.url + "/v1", "api_key": "k"}},
               "models": {"old": {"endpoints": ["up:gpt-4o"]}}}
        server = supervised(home, cfg)
        cfg["server"] = {"workers": 2, "listen": f"127.0.0.1:{server.port}"}
        try:
            server.write_config({**cfg, "models": {"new": {"endpoints": ["up:gpt-4o"]}}})
            result = run_cli(home, "reload")
            assert result.returncode == 0, result.stderr
            # POST /admin/reload reached one worker; the supervisor forwarded it to the other.
            wait_until(lambda: all(chat(server.url, None, "new").status_code == 200 for _ in range(8)), 10,
                       what="both workers to serve the reloaded alias")
            assert all(chat(server.url, None, "old").status_code == 404 for _ in range(8))

            with ThreadPoolExecutor(1) as pool:
                running = pool.submit(lambda: requests.post(
                    server.url + "/v1/chat/completions", timeout=30,
                    json={"model": "new", "messages": [{"role": "user", "content": "slow"}]}))
                wait_until(lambda: any(r.body and r.body["messages"][0]["content"] == "slow"
                                       for r in fake.received), what="the slow request upstream")
                server.proc.send_signal(signal.SIGTERM)
                wait_until(lambda: "stopping 2 workers" in server.output(), what="the stop to begin")
                release.set()
                assert running.result().status_code == 200  # drained, not cut off
        finally:
            release.set()
            assert server.stop() == 0
    assert "supervisor stopped" in server.output()


def test_postgresql_down_requests_still_served_and_spend_written_when_it_returns(home, pg_cluster, upstream):
    import psycopg2
    url = pg_cluster.database()
    name = url.rsplit("/", 1)[1]
    assert run_cli(home, "account", "-g").returncode == 0
    server = ServerProcess(home, {"database": {"url": url}, "providers": {
        "up": {"derives": "openai", "api_base": upstream.url + "/v1", "api_key": "k"}}})
    admin = psycopg2.connect(pg_cluster.url())
    admin.autocommit = True

    def database(allow: bool):
        with admin.cursor() as cur:
            cur.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(allow).lower()}")
            if not allow:  # and cut the server's open connections, as a database restart would
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    def rows() -> int:
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT COALESCE(SUM(requests), 0) FROM spend_logs WHERE status = 200")
            count = cur.fetchone()[0]
        conn.close()
        return count

    try:
        token = run_cli(home, "keygen", "--exp", "1h").stdout.strip()
        budgeted = run_cli(home, "keygen", "--exp", "1h", "--budget", "1000000").stdout.strip()
        assert chat(server.url, token).status_code == 200
        wait_until(lambda: rows() == 1, what="the first row")
        database(allow=False)
        assert [chat(server.url, token).status_code for _ in range(10)] == [200] * 10
        refused = chat(server.url, budgeted)  # a budget cannot be checked: refused, not waved through
        assert refused.status_code == 503 and "database is unavailable" in refused.json()["error"]["message"]
        wait_until(lambda: "spend log write failed" in server.output(), what="the failed write")
        database(allow=True)
        wait_until(lambda: rows() == 11, 20, 0.2, what="the buffered spend to be written")
        assert chat(server.url, budgeted).status_code == 200
        wait_until(lambda: "the database answers again" in server.output(), what="the recovery")
        assert "cannot read revocations and routes from the database" in server.output()
    finally:
        database(allow=True)
        admin.close()
        assert server.stop() == 0


@pytest.mark.parametrize("config, args, message", [
    ({"server": {"workers": 0}}, [], "server.workers: must be a whole number of processes, at least 1, got 0"),
    ({"server": {"workers": 1.5}}, [], "server.workers: must be a whole number of processes, at least 1, got 1.5"),
    ({}, ["--workers", "0"], "error: --workers must be a whole number of processes, at least 1, got 0"),
    ({}, ["--workers", "two"], "error: --workers must be a whole number of processes, at least 1, got 'two'"),
])
def test_a_bad_worker_count_is_refused_before_anything_starts(home, config, args, message):
    (home / "bitrouter.yaml").write_text(json.dumps(config))
    result = run_cli(home, "serve", *args, timeout=20)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert not (home / "run" / "bitrouter.pid").exists()
