"""Several instances on one database agree: budgets, revocations, dynamic routes, usage.

Every test runs on two deployments: two servers with their own homes (as on two hosts;
the second trusts the first's issuer) and one `server.workers: 2` server, each over one
PostgreSQL database and over one SQLite file. Requests go out on fresh connections, so
with workers the kernel spreads them over both processes.
"""

import os
import re
import signal
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

    def stop(self):
        for server in self.servers:
            assert server.stop() == 0, server.output()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def upstream():
    """An OpenAI-compatible fake that takes 300 ms, so concurrent requests are in flight together."""
    with FakeUpstream(lambda req: Reply(body=chat_completion(), delay=0.3)) as fake:
        yield fake


@pytest.fixture(params=["two instances", "two workers"])
def deployment(request, tmp_path, db_url, upstream):
    first = tmp_path / "a"
    first.mkdir()
    assert run_cli(first, "account", "-g").returncode == 0
    issuer = accounts.list_accounts(home_mod.resolve(home_dir=first))[0].caip10
    cfg = {"database": {"url": db_url}, "auth": {"mode": "on", "trusted_issuers": [issuer]},
           "providers": {"up": {"derives": "openai", "api_base": upstream.url + "/v1", "api_key": "k"}}}
    if request.param == "two workers":
        servers = [ServerProcess(first, {**cfg, "server": {"workers": 2}})]
        urls = [servers[0].url] * 2
    else:
        second = tmp_path / "b"
        second.mkdir()
        servers = [ServerProcess(first, cfg), ServerProcess(second, cfg)]
        urls = [s.url for s in servers]
    deployment = Deployment(servers, first, urls)
    yield deployment
    for server in servers:
        server.stop()


def chat(url, token, model="up:gpt-4o"):
    with requests.Session() as fresh:  # a new connection each time: workers share the load
        return fresh.post(url + "/v1/chat/completions", json={**BODY, "model": model},
                          headers={"authorization": f"Bearer {token}"}, timeout=30)


def test_a_rounds_budget_holds_across_instances_and_usage_adds_up(deployment, upstream):
    token = deployment.token("--budget-range", "rounds:10", "--name", "shared")
    urls = deployment.urls
    with ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(lambda i: chat(urls[i % 2], token).status_code, range(40)))
    granted = statuses.count(200)
    assert statuses.count(402) == 40 - granted
    # docs/auth.md: each instance holds its own rounds; the overrun is bounded by what the
    # other instance had in flight, which its own holds cap at 10: never more than 2 x 10.
    assert 10 <= granted <= 20, statuses
    assert len(upstream.received) == granted
    # A request after the burst sees everything that was granted, on either instance.
    for url in urls:
        assert chat(url, token).status_code == 402
    deployment.stop()  # every spend row is written by now
    report = deployment.cli("usage")
    assert re.search(rf"shared\s+up:gpt-4o\s+42\b", report), report  # 40 + the 2 checks above
    assert re.search(r"over 42 requests$", report), report


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
    server = ServerProcess(home, {"server": {"workers": 2}, "providers": {
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
