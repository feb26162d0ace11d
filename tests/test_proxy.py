"""The proxy core through a real server process: routing, failover, streaming, errors."""

import requests

from fakes import chat_completion, error, Reply


def upstream_config(*fakes, strategy="priority", **alias):
    """Providers up0, up1... deriving openai and pointing at fakes, plus an alias over them."""
    providers = {f"up{i}": {"derives": "openai", "api_base": f.url + "/v1", "api_key": f"key-{i}"}
                 for i, f in enumerate(fakes)}
    endpoints = [{"provider": f"up{i}", "model_id": f"m{i}"} for i in range(len(fakes))]
    return {"providers": providers, "models": {"fast": {"strategy": strategy, "endpoints": endpoints, **alias}}}


def chat(server, model="fast", stream=False, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}
    return requests.post(server.url + "/v1/chat/completions", json=body, timeout=30, stream=stream)


def test_passthrough_keeps_unknown_fields_and_rewrites_model(start_server, fake_openai):
    server = start_server(upstream_config(fake_openai))
    resp = chat(server, vendor_extension={"keep": True})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-bitrouter-upstream"] == "up0:m0"
    sent = fake_openai.received[-1]
    assert sent.body["model"] == "m0"
    assert sent.body["vendor_extension"] == {"keep": True}
    assert sent.headers["authorization"] == "Bearer key-0"
