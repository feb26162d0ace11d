"""The built-in provider registry: facts about known providers, shipped as package data."""

import functools
import json
from pathlib import Path

DATA_FILE = Path(__file__).with_name("providers.json")

LOCAL_SCHEME = "mock"  # URLs served in process (protocols/mock.py): no network, no key
LOCAL_BASE = LOCAL_SCHEME + "://local"

# The mock provider is code, not a network service: a Chat Completions API in this process.
MOCK = {
    "display_name": "Mock (echo, no network)",
    "api_protocol": "openai",
    "api_base": LOCAL_BASE,
    "protocols": {"openai": LOCAL_BASE},
    "env_prefix": "BITROUTER_MOCK",
    "auth": "bearer",
    "models": {"echo": {"context": 1000000, "max_output": 1000000, "modalities": ["text", "image"],
                        "pricing": {"input": 0, "output": 0}}},
}

# The four best-known providers come first wherever providers are listed for a person to choose from.
FEATURED = ("openai", "anthropic", "google", "openrouter")


def needs_key(api_base: str) -> bool:
    """Whether a provider at this base URL needs a key: every one but the in-process mock."""
    return not api_base.startswith(LOCAL_SCHEME + "://")


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
