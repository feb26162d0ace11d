"""The built-in provider registry: facts about known providers, shipped as package data."""

import functools
import json
from pathlib import Path

DATA_FILE = Path(__file__).with_name("providers.json")

PROTOCOLS = ("openai", "responses", "anthropic", "google", "mock")
AUTH_STYLES = ("bearer", "x-api-key", "x-goog-api-key")
# How each protocol's own API expects its key, for providers that do not say otherwise.
PROTOCOL_AUTH = {"openai": "bearer", "responses": "bearer", "anthropic": "x-api-key",
                 "google": "x-goog-api-key", "mock": "bearer"}

# The mock provider is code, not a network service: it needs no key and no base URL.
MOCK = {
    "display_name": "Mock (echo, no network)",
    "api_protocol": "mock",
    "api_base": "mock://local",
    "protocols": {"mock": "mock://local"},
    "env_prefix": "BITROUTER_MOCK",
    "auth": "bearer",
    "models": {"echo": {"context": 1000000, "max_output": 1000000, "modalities": ["text", "image"],
                        "pricing": {"input": 0, "output": 0}}},
}

# The four providers most people start with come first wherever providers are listed for a
# person to choose from (the wizard, `bitrouter providers`).
FEATURED = ("openai", "anthropic", "google", "openrouter")


def providers() -> dict:
    """Every built-in provider definition by name (the mock included); do not mutate."""
    return _load()


def names() -> list[str]:
    """Built-in provider names, the featured ones first, then alphabetical."""
    rest = sorted(n for n in _load() if n not in FEATURED)
    return [n for n in FEATURED if n in _load()] + rest


def model_info(provider: str, model_id: str) -> dict | None:
    """Catalog facts (context, prices) for one model of a built-in provider, if known."""
    return _load().get(provider, {}).get("models", {}).get(model_id)


@functools.lru_cache(maxsize=1)
def _load() -> dict:
    """Read the data file once per process."""
    with open(DATA_FILE, encoding="utf-8") as f:
        data = json.load(f)
    table = dict(data["providers"])
    table["mock"] = MOCK
    return table
