"""`GET /metrics` through a real server: the Prometheus text format, the series, the auth rules."""

import time
import types

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import run_cli
from bitrouter.metrics import Metrics, Record
from bitrouter.router import Health

MOCK = {"models": {"echo": {"endpoints": ["mock:echo"]}}}


def samples(text: str) -> dict:
    """{(sample name, frozenset of labels): value} of an exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def chat(url, model="echo", **kw):
    return requests.post(url + "/v1/chat/completions", timeout=10, **kw, json={
        "model": model, "messages": [{"role": "user", "content": "count me"}]})


def test_metrics_count_requests_errors_tokens_and_latency_per_route(start_server):
    server = start_server(MOCK)
    for _ in range(2):
        assert chat(server.url).status_code == 200
    assert chat(server.url, "missing").status_code == 404
    reply = requests.get(server.url + "/metrics", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(reply.text)
    ok = frozenset({"route": "echo", "endpoint": "mock:echo", "protocol": "openai", "status": "200"}.items())
    assert got[("bitrouter_requests_total", ok)] == 2
    missing = frozenset({"route": "", "endpoint": "", "protocol": "openai", "status": "404"}.items())
    assert got[("bitrouter_requests_total", missing)] == 1
    assert got[("bitrouter_request_errors_total", missing)] == 1
    assert ("bitrouter_request_errors_total", ok) not in got
    tokens = frozenset({"route": "echo", "endpoint": "mock:echo", "kind": "output"}.items())
    assert got[("bitrouter_tokens_total", tokens)] == 4  # "count me" echoed twice
    hist = frozenset({"route": "echo", "endpoint": "mock:echo", "status": "200"}.items())
    assert got[("bitrouter_request_duration_seconds_count", hist)] == 2
    assert got[("bitrouter_request_duration_seconds_bucket", hist | {("le", "+Inf")})] == 2
    assert got[("bitrouter_requests_in_flight", frozenset({("stream", "true")}))] == 0
    openmetrics = requests.get(server.url + "/metrics", timeout=10,
                               headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


def test_upstream_failures_and_cooldowns_are_exported(start_server):
    server = start_server({"providers": {"down": {"api_protocol": "openai", "api_key": "k-0123456789",
                                                  "api_base": "http://127.0.0.1:1/v1"}},
                           "routing": {"cooldown_failures": 1, "cooldown_seconds": 60}})
    assert chat(server.url, "down:m").status_code == 502
    got = samples(requests.get(server.url + "/metrics", timeout=10).text)
    assert got[("bitrouter_upstream_failures_total", frozenset({"endpoint": "down:m", "status": ""}.items()))] == 1
    assert 0 < got[("bitrouter_endpoint_cooldown_seconds", frozenset({("endpoint", "down:m")}))] <= 60


def test_metrics_need_an_admin_token_once_tokens_are_required(start_server, home):
    run_cli(home, "account", "-g")
    server = start_server(MOCK)
    assert requests.get(server.url + "/metrics", timeout=10).status_code == 401
    api = run_cli(home, "keygen", "--exp", "1h").stdout.strip()
    admin = run_cli(home, "keygen", "--scope", "admin", "--exp", "5m").stdout.strip()
    assert requests.get(server.url + "/metrics", headers={"authorization": f"Bearer {api}"},
                        timeout=10).status_code == 403
    assert requests.get(server.url + "/metrics", headers={"authorization": f"Bearer {admin}"},
                        timeout=10).status_code == 200


@pytest.mark.parametrize("needs, status", [("api", 200), ("open", 200)])
def test_metrics_auth_is_configurable(start_server, home, needs, status):
    run_cli(home, "account", "-g")
    server = start_server({**MOCK, "server": {"metrics_auth": needs}})
    api = run_cli(home, "keygen", "--exp", "1h").stdout.strip()
    headers = {"authorization": f"Bearer {api}"} if needs == "api" else {}
    assert requests.get(server.url + "/metrics", headers=headers, timeout=10).status_code == status
    if needs == "api":
        assert requests.get(server.url + "/metrics", timeout=10).status_code == 401


def test_a_counter_added_in_metrics_py_is_exported_without_touching_the_exporter():
    """Other features (guardrails) count through Metrics.count; /metrics picks every name up."""
    from bitrouter import prometheus
    metrics = Metrics()
    metrics.count("guardrail_hits", rule="no-secrets", action="block")
    metrics.count("guardrail_hits", rule="no-secrets", action="block")
    record = Record(id=1, started=time.time(), protocol="anthropic", model="m", stream=True, route="m",
                    upstream="p:m", status=200, latency_ms=1500)
    metrics.finish(record)
    srv = types.SimpleNamespace(metrics=metrics, health=Health(), started=time.time())
    body, _ = prometheus.exposition(srv)
    got = samples(body.decode())
    assert got[("bitrouter_guardrail_hits_total", frozenset({"rule": "no-secrets", "action": "block"}.items()))] == 2
    hist = frozenset({"route": "m", "endpoint": "p:m", "status": "200"}.items())
    assert got[("bitrouter_request_duration_seconds_bucket", hist | {("le", "1.0")})] == 0
    assert got[("bitrouter_request_duration_seconds_bucket", hist | {("le", "2.5")})] == 1
    assert got[("bitrouter_request_duration_seconds_sum", hist)] == 1.5


def test_label_sets_are_bounded_against_arbitrary_model_names():
    from bitrouter import metrics as metrics_mod
    metrics = Metrics()
    for i in range(metrics_mod.MAX_SERIES + 50):
        metrics.finish(Record(id=i, started=time.time(), protocol="openai", model=f"p:model-{i}", stream=False,
                              route=f"p:model-{i}", upstream=f"p:model-{i}", status=404))
    series = metrics.exported()[0]["requests"]
    assert len(series) == metrics_mod.MAX_SERIES + 1
    assert series[(("endpoint", "other"), ("protocol", "openai"), ("route", "other"), ("status", "404"))] == 50
