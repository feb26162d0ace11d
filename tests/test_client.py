"""The admin HTTP client, against a real `bitrouter serve` on loopback."""

import pytest
from conftest import free_port, run_cli

from bitrouter import client
from bitrouter import home as home_mod

MOCK = {"models": {"default": {"endpoints": ["mock:echo"]}}}


def test_health_and_an_error_body_read_through_one_reply(home, start_server):
    server = start_server(MOCK)
    assert client.health(server.url) == (True, "ok")
    with client.Client(server.url) as admin:
        assert admin.get("/health").body["status"] == "ok"
        missing = admin.delete("/admin/routes/nope")
    assert missing.status == 404
    assert missing.message == "no dynamic route named 'nope'"


def test_a_home_with_an_account_signs_each_admin_request(home, start_server):
    assert run_cli(home, "account", "-g").returncode == 0  # a trusted issuer: tokens are now required
    server = start_server(MOCK)
    with client.Client(server.url) as anonymous:
        refused = anonymous.get("/admin/metrics")
    assert refused.status == 401 and "token" in refused.message
    with client.Client(server.url, home_mod.at(home)) as admin:
        assert "providers" in admin.get("/admin/metrics").body
        added = admin.post("/admin/routes", {"model": "r", "endpoints": ["mock:echo"]})
        assert added.status == 200 and added.body["route"]["model"] == "r"


def test_the_event_stream_arrives_in_chunks(home, start_server):
    server = start_server(MOCK)
    with client.Client(server.url) as admin, admin.stream("/admin/events") as chunks:
        first = next(iter(chunks))
    assert first.startswith(b": bitrouter events\n\n")


def test_a_server_that_is_not_there_is_unreachable_in_plain_words():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(client.Unreachable, match="^connection refused$"):
        client.Client(url).get("/health")
    assert client.health(url) == (False, "not answering (connection refused)")


def test_a_reply_without_an_error_body_says_its_status():
    assert client.Reply(502, b"").message == "the server answered HTTP 502"
    assert client.Reply(500, b'{"error": {"message": "boom"}}').message == "boom"
    assert client.Reply(200, b"[1]").body == {}
