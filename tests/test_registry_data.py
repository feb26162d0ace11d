"""Sanity checks for the built-in provider catalogue (bitrouter/providers.json).

Stdlib json only: the data file must stay valid on its own, whatever the loader does.
"""

import json
import re
from pathlib import Path

import pytest

DATA_FILE = Path(__file__).resolve().parent.parent / "bitrouter" / "providers.json"

PROTOCOLS = {"openai", "responses", "anthropic", "google"}
AUTH_STYLES = {"bearer", "x-api-key", "x-goog-api-key"}
REQUIRED = {"display_name", "api_protocol", "api_base", "protocols", "env_prefix", "auth", "models"}
OPTIONAL = {"default_headers"}
MODEL_KEYS = {"context", "max_output", "modalities", "pricing"}
PRICE_KEYS = {"input", "cache_read", "cache_write", "output", "reasoning"}
MODALITIES = {"text", "image", "audio", "video", "file"}


@pytest.fixture(scope="module")
def data():
    with open(DATA_FILE, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def providers(data):
    return data["providers"]


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def test_top_level(data):
    assert data["version"] == 1
    assert isinstance(data["providers"], dict) and data["providers"]


def test_core_providers_present(providers):
    for name in ("openai", "anthropic", "google", "openrouter", "deepseek", "xai"):
        assert name in providers, name
    assert "bitrouter-cloud" not in providers


def test_provider_fields(providers):
    seen_prefixes = {}
    for name, p in providers.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name), name
        assert REQUIRED <= set(p), (name, REQUIRED - set(p))
        assert set(p) <= REQUIRED | OPTIONAL, (name, set(p) - REQUIRED - OPTIONAL)
        assert isinstance(p["display_name"], str) and p["display_name"].strip(), name
        assert p["api_protocol"] in PROTOCOLS, name
        assert re.fullmatch(r"https://[^\s/]+(/\S*)?", p["api_base"]), (name, p["api_base"])
        assert not p["api_base"].endswith("/"), (name, p["api_base"])
        protos = p["protocols"]
        assert isinstance(protos, dict) and protos, name
        for proto, base in protos.items():
            assert proto in PROTOCOLS, (name, proto)
            assert re.fullmatch(r"https://[^\s/]+(/\S*)?", base), (name, proto, base)
            assert not base.endswith("/"), (name, proto, base)
            if proto == "anthropic":
                assert not base.endswith("/v1"), (name, base)
            if proto == "google":
                assert base == "https://generativelanguage.googleapis.com", (name, base)
        assert p["api_protocol"] in protos, name
        assert protos[p["api_protocol"]] == p["api_base"], name
        prefix = p["env_prefix"]
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", prefix), (name, prefix)
        assert prefix not in seen_prefixes, (name, seen_prefixes.get(prefix), prefix)
        seen_prefixes[prefix] = name
        assert p["auth"] in AUTH_STYLES, name
        if "default_headers" in p:
            headers = p["default_headers"]
            assert isinstance(headers, dict) and headers, name
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()), name
        assert isinstance(p["models"], dict), name


def test_known_base_urls(providers):
    assert providers["openai"]["api_base"] == "https://api.openai.com/v1"
    assert providers["anthropic"]["api_base"] == "https://api.anthropic.com"
    assert providers["anthropic"]["auth"] == "x-api-key"
    assert providers["google"]["api_protocol"] == "google"
    assert providers["google"]["auth"] == "x-goog-api-key"
    assert providers["openrouter"]["api_base"] == "https://openrouter.ai/api/v1"


def test_models(providers):
    for name, p in providers.items():
        for mid, m in p["models"].items():
            assert isinstance(mid, str) and mid.strip() and mid == mid.strip(), (name, mid)
            assert isinstance(m, dict), (name, mid)
            assert set(m) <= MODEL_KEYS, (name, mid, set(m) - MODEL_KEYS)
            for k in ("context", "max_output"):
                if k in m:
                    assert isinstance(m[k], int) and not isinstance(m[k], bool) and m[k] > 0, (name, mid, k)
            if "modalities" in m:
                assert m["modalities"] and set(m["modalities"]) <= MODALITIES, (name, mid)
            if "pricing" in m:
                pr = m["pricing"]
                assert pr and set(pr) <= PRICE_KEYS, (name, mid, pr)
                for k, v in pr.items():
                    assert _is_number(v) and v >= 0, (name, mid, k, v)


def test_reference_prices(providers):
    gpt4o = providers["openai"]["models"]["gpt-4o"]["pricing"]
    assert gpt4o["input"] == 2.5
    assert gpt4o["output"] == 10.0
    assert providers["openrouter"]["models"]["openai/gpt-4o"]["pricing"]["input"] == 2.5
    assert providers["anthropic"]["models"]["claude-sonnet-4-5"]["pricing"] == {
        "input": 3.0, "cache_read": 0.3, "cache_write": 3.75, "output": 15.0}


def test_openrouter_ids_are_namespaced(providers):
    assert all("/" in mid for mid in providers["openrouter"]["models"])


def test_file_is_small():
    assert DATA_FILE.stat().st_size < 500_000
