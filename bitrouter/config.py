"""Configuration: .env + bitrouter.yaml + the built-in registry, resolved and validated."""

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bitrouter import Error, did_you_mean, guardrails, protocols, registry

DEFAULT_LISTEN = "127.0.0.1:8787"
LISTEN_ENV = "BITROUTER_LISTEN"  # `--listen` and the environment win over server.listen
BARE_MODEL_RULES = ("unique", "off")
STRATEGIES = ("priority", "load_balance")
AUTH_MODES = ("auto", "on", "open")

# Tunables with their defaults; docs/configuration.md explains each one.
SERVER_DEFAULTS = {"listen": DEFAULT_LISTEN, "max_body_bytes": 10 * 1024 * 1024,
                   "drain_timeout": 30.0, "ping_interval": 15.0, "workers": 1, "metrics_auth": "admin",
                   "header_timeout": 10.0, "body_timeout": 30.0, "idle_timeout": 75.0}
METRICS_AUTH = ("admin", "api", "open")  # the token scope GET /metrics needs
UPSTREAM_DEFAULTS = {"connect_timeout": 5.0, "read_timeout": 300.0,
                     "max_body_bytes": 16 * 1024 * 1024, "max_frame_bytes": 4 * 1024 * 1024}
ROUTING_DEFAULTS = {"cooldown_failures": 3, "cooldown_seconds": 5.0, "max_retry_wait": 2.0}
# routing.bare_models: how a model name without `provider:` that is no alias resolves.
ROUTING_SETTINGS = {**ROUTING_DEFAULTS, "bare_models": "unique"}
AUTH_DEFAULTS = {"mode": "auto", "trusted_issuers": [], "clock_skew": 30.0}
LOGGING_DEFAULTS = {"max_bytes": 10 * 1024 * 1024, "backups": 3}

PROVIDER_KEYS = ("api_key", "api_base", "api_protocol", "derives", "env_prefix", "auth",
                 "default_headers", "models")
ENDPOINT_KEYS = ("provider", "model_id", "api_key", "api_base", "weight")
ALIAS_KEYS = ("strategy", "endpoints") + tuple(ROUTING_DEFAULTS)

_SECRET_NAME = re.compile(r"(?:_API_KEY|_TOKEN|_SECRET|_PASSWORD|_ACCESS_KEY)$", re.IGNORECASE)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Error):
    """A configuration problem, phrased as `file: key.path: what is wrong`."""


@dataclass
class Provider:
    """One upstream provider after merging, derives and environment overrides."""

    name: str
    api_protocol: str
    api_base: str
    api_key: str = ""
    env_prefix: str = ""
    auth: str = "bearer"
    default_headers: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)

    @property
    def configured(self) -> bool:
        """A provider is usable once it has a key (the mock never needs one)."""
        return bool(self.api_key) or not self.needs_key

    @property
    def needs_key(self) -> bool:
        """Every network provider needs a key; the in-process mock does not."""
        return registry.needs_key(self.api_base)


@dataclass
class Endpoint:
    """One place a model name can be served from, with optional per-endpoint credentials."""

    provider: str
    model_id: str
    api_key: str | None = None
    api_base: str | None = None
    weight: int = 1

    @property
    def label(self) -> str:
        """`provider:model_id`, the name logs, metrics and token model globs use."""
        return f"{self.provider}:{self.model_id}"


@dataclass
class Alias:
    """A routing alias from `models:`: a strategy over an ordered list of endpoints."""

    name: str
    strategy: str
    endpoints: list
    cooldown_failures: int = ROUTING_DEFAULTS["cooldown_failures"]
    cooldown_seconds: float = ROUTING_DEFAULTS["cooldown_seconds"]
    max_retry_wait: float = ROUTING_DEFAULTS["max_retry_wait"]


@dataclass
class Config:
    """Everything a running BitRouter needs, resolved from disk and the environment."""

    path: Path
    server: dict
    upstream: dict
    routing: dict
    bare_models: str
    auth: dict
    logging: dict
    database_url: str
    providers: dict
    models: dict
    unset_vars: list = field(default_factory=list)
    guardrails: "guardrails.Policy" = None  # the compiled `guardrails:` section

    @property
    def listen(self) -> str:
        """The `server.listen` address as written (`host:port`)."""
        return self.server["listen"]

    @property
    def host_port(self) -> tuple[str, int]:
        """The listen address split into host and port (validated at load)."""
        return split_listen(self.listen)

    def configured_providers(self) -> list[str]:
        """Names of providers that have a key (sorted), the keyless mock excluded."""
        return sorted(n for n, p in self.providers.items() if p.configured and p.needs_key)


def load(home, environ=None) -> Config:
    """Load and validate the configuration for a Home; raises ConfigError with the key path."""
    env = load_env(home.env_file, environ)
    path = Path(home.config_file)
    raw = _read_yaml(path)
    unset: list[str] = []
    tree = _expand(raw, env, unset)
    return _build(path, tree, env, home, sorted(set(unset)))


def load_env(env_file, environ=None) -> dict:
    """The environment map: the .env file under the process environment (the process wins)."""
    from dotenv import dotenv_values
    environ = os.environ if environ is None else environ
    env = {}
    if env_file and Path(env_file).is_file():
        env = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    env.update(environ)
    return env


def detect_providers(environ=None) -> list[str]:
    """Built-in providers whose `<PREFIX>_API_KEY` is set in the environment, sorted."""
    environ = os.environ if environ is None else environ
    return sorted(name for name, p in registry.providers().items()
                  if registry.needs_key(p["api_base"]) and environ.get(p["env_prefix"] + "_API_KEY"))


def split_listen(listen: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 in brackets); raise ValueError when malformed."""
    host, sep, port = str(listen).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {listen!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host != "localhost":
        ipaddress.ip_address(host)  # raises ValueError for a bad address
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


# ---------------------------------------------------------------- helpers


def _read_yaml(path: Path):
    """Parse the YAML file (safe loader); a missing file is an empty config."""
    import yaml
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ConfigError(f"{path}: invalid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _expand(node, env: dict, unset: list):
    """Replace ${VAR} and ${VAR:-default} in every string of the tree."""
    if isinstance(node, str):
        def sub(m):
            value = env.get(m.group(1))
            if value:
                return value
            if m.group(2) is not None:
                return m.group(2)
            unset.append(m.group(1))
            return ""
        return _VAR.sub(sub, node)
    if isinstance(node, dict):
        return {k: _expand(v, env, unset) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, env, unset) for v in node]
    return node


def _build(path: Path, tree: dict, env: dict, home, unset: list) -> Config:
    """Validate the expanded tree and resolve it into a Config."""
    v = _Validator(path)
    v.keys(tree, "", ("server", "upstream", "routing", "auth", "logging", "database",
                      "providers", "models", "guardrails"))
    server = v.section(tree, "server", SERVER_DEFAULTS)
    v.choice(server["metrics_auth"], "server.metrics_auth", METRICS_AUTH)
    if env.get(LISTEN_ENV):
        server["listen"] = env[LISTEN_ENV]
    try:
        split_listen(server["listen"])
    except ValueError as exc:
        if env.get(LISTEN_ENV):
            raise ConfigError(f"{LISTEN_ENV}: {exc}") from None
        v.fail("server.listen", str(exc))
    if not isinstance(server["workers"], int) or server["workers"] < 1:
        v.fail("server.workers", f"must be a whole number of processes, at least 1, got {server['workers']!r}")
    auth = v.section(tree, "auth", AUTH_DEFAULTS)
    v.choice(auth["mode"], "auth.mode", AUTH_MODES)
    settings = v.section(tree, "routing", ROUTING_SETTINGS)
    v.choice(settings["bare_models"], "routing.bare_models", BARE_MODEL_RULES)
    routing = {k: settings[k] for k in ROUTING_DEFAULTS}  # what each route carries
    providers = _resolve_providers(v, tree.get("providers"), env)
    models = _resolve_models(v, tree.get("models"), providers, routing)
    database = v.mapping(tree.get("database"), "database")
    v.keys(database, "database", ("url",))
    v.strings(database, "database", ("url",))
    db_url = home.db_url or env.get("BITROUTER_DATABASE_URL") or database.get("url") or home.default_db_url
    cfg = Config(path=path, server=server, upstream=v.section(tree, "upstream", UPSTREAM_DEFAULTS),
                 routing=routing, bare_models=settings["bare_models"], auth=auth,
                 logging=v.section(tree, "logging", LOGGING_DEFAULTS), database_url=str(db_url),
                 providers=providers, models=models, unset_vars=unset)
    cfg.guardrails = guardrails.compile_policy(tree.get("guardrails"), v.fail, _own_secrets(cfg, env))
    return cfg


def _own_secrets(cfg: Config, env: dict) -> list:
    """Keys BitRouter holds: its providers' and endpoints' keys, and secret-named environment values
    (an agent that read them from .env or the shell must not send them to a provider)."""
    from bitrouter.boundary import secrets_of
    named = {value for name, value in env.items() if _SECRET_NAME.search(name) and len(value) >= 8}
    return sorted(set(secrets_of(cfg)) | named)


def _resolve_providers(v, user, env: dict) -> dict:
    """Merge user providers over the registry, resolve derives, then apply env overrides."""
    user = v.mapping(user, "providers")
    merged = {name: {"api_protocol": p["api_protocol"], "api_base": p["api_base"],
                     "env_prefix": p["env_prefix"], "auth": p["auth"],
                     "default_headers": dict(p.get("default_headers", {})),
                     "models": p.get("models", {}), "_protocols": p.get("protocols", {})}
              for name, p in registry.providers().items()}
    for name, fields in user.items():
        where = f"providers.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            v.fail(where, "provider names may use letters, digits, '.', '_' and '-' only")
        fields = v.mapping(fields, where)
        v.keys(fields, where, PROVIDER_KEYS)
        v.strings(fields, where, ("api_key", "api_base", "api_protocol", "derives", "env_prefix", "auth"))
        entry = merged.setdefault(name, {})
        if fields.get("api_protocol") not in (None, entry.get("api_protocol")):
            # Choosing another protocol of a built-in picks that protocol's documented base URL
            # and, unless told otherwise, that protocol's usual way of sending the key.
            if "api_base" not in fields and "_protocols" in entry:
                entry["api_base"] = entry["_protocols"].get(fields["api_protocol"], entry["api_base"])
            if "auth" not in fields:
                entry["auth"] = _protocol_auth(fields["api_protocol"])
        entry.update({k: val for k, val in fields.items() if val is not None})
    resolved = {}
    for name in user:
        _derive(v, name, merged, [])
        if "env_prefix" not in merged[name]:
            merged[name]["env_prefix"] = _own_prefix(v, name, merged)
    for name, entry in merged.items():
        resolved[name] = _finish_provider(v, name, entry, env)
    return resolved


def _derive(v, name: str, merged: dict, chain: list) -> dict:
    """Fill a provider's unset fields from its `derives` parent, to any depth.

    A child never inherits its parent's key, env prefix or headers: those belong to the
    parent's own endpoint, and sending them to the child's api_base would leak them.
    """
    entry = merged[name]
    parent = entry.get("derives")
    if not parent:
        return entry
    where = f"providers.{name}.derives"
    if name in chain:
        v.fail(where, "derives cycle: " + " -> ".join(chain + [name]))
    if parent not in merged:
        v.fail(where, f"unknown provider {parent!r}{did_you_mean(parent, merged)}")
    base = _derive(v, parent, merged, chain + [name])
    for key in ("api_protocol", "models", "_protocols"):
        if key in base:
            entry.setdefault(key, base[key])
    if "auth" not in entry:  # the parent's auth style only fits the parent's protocol
        same = entry.get("api_protocol") == base.get("api_protocol")
        entry["auth"] = base.get("auth") if same else _protocol_auth(entry.get("api_protocol"))
    if "api_base" not in entry:
        protocol = entry.get("api_protocol")
        entry["api_base"] = base.get("_protocols", {}).get(protocol) or base.get("api_base")
    del entry["derives"]
    return entry


def _protocol_auth(name) -> str | None:
    """How a protocol's own API takes its key, for providers that do not say otherwise."""
    return protocols.get(name).auth if name in protocols.names() else None


def _own_prefix(v, name: str, merged: dict) -> str:
    """The env prefix of a provider that names none: its own name, upper-cased.

    It must not be another provider's: `OpenAI` deriving `openai` would read OPENAI_API_KEY.
    """
    prefix = re.sub(r"[^A-Z0-9]", "_", name.upper())
    owner = next((n for n, e in merged.items() if n != name and e.get("env_prefix") == prefix), None)
    if owner:
        v.fail(f"providers.{name}", f"its env prefix {prefix} belongs to provider {owner!r}; "
                                    "set env_prefix explicitly")
    return prefix


def _finish_provider(v, name: str, entry: dict, env: dict) -> Provider:
    """Apply `<PREFIX>_API_KEY`/`_BASE_URL`, then type-check the result."""
    where = f"providers.{name}"
    protocol = entry.get("api_protocol")
    if not protocol:
        v.fail(where, "api_protocol is required for a new provider (or use derives)")
    v.choice(protocol, where + ".api_protocol", protocols.names())
    base = entry.get("api_base")
    prefix = entry.get("env_prefix") or ""
    key = entry.get("api_key") or ""
    if prefix:
        key = env.get(prefix + "_API_KEY") or key
        base = env.get(prefix + "_BASE_URL") or base
    if not base:
        v.fail(where, "api_base is required")
    if not isinstance(base, str) or not re.match(r"^(https?|mock)://[^\s/]+", base):
        v.fail(where + ".api_base", f"not an http(s) URL: {base!r}")
    auth = entry.get("auth") or "bearer"
    v.choice(auth, where + ".auth", list(protocols.AUTH_STYLES))
    headers = v.mapping(entry.get("default_headers"), where + ".default_headers")
    models = v.mapping(entry.get("models"), where + ".models")
    return Provider(name=name, api_protocol=protocol, api_base=base.rstrip("/"), api_key=str(key),
                    env_prefix=str(prefix), auth=auth,
                    default_headers={str(k): str(val) for k, val in headers.items()},
                    models=models)


def _resolve_models(v, user, providers: dict, routing: dict) -> dict:
    """Validate the `models:` aliases against the resolved providers."""
    aliases = {}
    for name, spec in v.mapping(user, "models").items():
        where = f"models.{name}"
        spec = v.mapping(spec, where)
        v.keys(spec, where, ALIAS_KEYS)
        strategy, endpoints = _route_parts(v, where, spec, providers, _endpoint)
        tuning = {k: v.number(spec.get(k, routing[k]), f"{where}.{k}") for k in ROUTING_DEFAULTS}
        tuning["cooldown_failures"] = int(tuning["cooldown_failures"])
        aliases[str(name)] = Alias(name=str(name), strategy=strategy, endpoints=endpoints, **tuning)
    return aliases


def route_parts(spec: dict, providers: dict) -> tuple[str, list]:
    """A dynamic route's (`/admin/routes`) strategy and endpoints, checked as `models:` checks an alias.

    An endpoint's own api_key or api_base is refused rather than dropped: a dynamic route is
    stored in the database, and keys belong in bitrouter.yaml and .env.
    """
    return _route_parts(_Validator(None), "", spec, providers, _stored_endpoint)


def _route_parts(v, where: str, spec: dict, providers: dict, endpoint) -> tuple[str, list]:
    """An alias's (or dynamic route's) strategy and its non-empty list of endpoints."""
    at = f"{where}." if where else ""
    strategy = spec.get("strategy", "priority")
    v.choice(strategy, at + "strategy", STRATEGIES)
    raw = spec.get("endpoints")
    if not isinstance(raw, list) or not raw:
        v.fail(at + "endpoints", "must be a non-empty list")
    return strategy, [endpoint(v, f"{at}endpoints[{i}]", e, providers) for i, e in enumerate(raw)]


def _stored_endpoint(v, where: str, raw, providers: dict) -> Endpoint:
    """A dynamic route's endpoint: an alias endpoint without a key or base of its own."""
    if isinstance(raw, dict) and (raw.get("api_key") or raw.get("api_base")):
        v.fail(where, "api_key and api_base belong in bitrouter.yaml; a dynamic route uses its provider's own")
    return _endpoint(v, where, raw, providers)


def _endpoint(v, where: str, raw, providers: dict) -> Endpoint:
    """One alias endpoint; accepts the `provider:model_id` shorthand string too."""
    if isinstance(raw, str):
        provider, _, model_id = raw.partition(":")
        raw = {"provider": provider, "model_id": model_id}
    raw = v.mapping(raw, where)
    v.keys(raw, where, ENDPOINT_KEYS)
    v.strings(raw, where, ("provider", "api_key", "api_base"))
    provider = raw.get("provider")
    if provider not in providers:
        v.fail(where + ".provider", f"unknown provider {provider!r}{did_you_mean(provider, providers)}")
    if not raw.get("model_id"):
        v.fail(where + ".model_id", "is required")
    if raw.get("api_base") and not raw.get("api_key"):
        # Otherwise the provider's own key would be sent to a URL it was never meant for.
        v.fail(where, "an endpoint with its own api_base needs its own api_key")
    weight = raw.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
        v.fail(where + ".weight", "must be a positive integer")
    return Endpoint(provider=provider, model_id=str(raw["model_id"]), api_key=raw.get("api_key") or None,
                    api_base=(raw.get("api_base") or "").rstrip("/") or None, weight=weight)


class _Validator:
    """Small helpers that raise ConfigError naming the file and the key path."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, message: str):
        place = [str(self.path)] if self.path else []  # None: not from a file (an admin request)
        raise ConfigError(": ".join(place + ([where] if where else []) + [message]))

    def mapping(self, node, where: str) -> dict:
        if node is None:  # an empty YAML section (`server:`) means "no settings"
            return {}
        if not isinstance(node, dict):
            self.fail(where, f"must be a mapping, got {type(node).__name__}")
        return node

    def keys(self, node: dict, where: str, allowed) -> None:
        for key in node:
            if key not in allowed:
                path = f"{where}.{key}" if where else str(key)
                self.fail(path, f"unknown key{did_you_mean(key, allowed)}")

    def choice(self, value, where: str, allowed) -> None:
        if value not in allowed:
            self.fail(where, f"must be one of {', '.join(allowed)}, got {value!r}{did_you_mean(value, allowed)}")

    def strings(self, node: dict, where: str, names) -> None:
        for key in names:
            if node.get(key) is not None and not isinstance(node[key], str):
                self.fail(f"{where}.{key}", f"must be a string, got {type(node[key]).__name__} (quote it)")

    def number(self, value, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self.fail(where, f"must be a non-negative number, got {value!r}")
        return value

    def section(self, tree: dict, name: str, defaults: dict) -> dict:
        node = self.mapping(tree.get(name), name)
        self.keys(node, name, defaults)
        merged = {**defaults, **node}
        for key, default in defaults.items():
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                self.number(merged[key], f"{name}.{key}")
            elif isinstance(default, list) and not isinstance(merged[key], list):
                self.fail(f"{name}.{key}", "must be a list")
            elif isinstance(default, str) and not isinstance(merged[key], str):
                self.fail(f"{name}.{key}", "must be a string")
        return merged
