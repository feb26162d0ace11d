"""Routing: model name -> ordered endpoints, failover, load balancing and cooldowns."""

import difflib
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from bitrouter import StatusError
from bitrouter.config import Alias, ConfigError, Endpoint, route_parts
from bitrouter.upstream import UpstreamError

log = logging.getLogger("bitrouter")


class RouteError(StatusError):
    """A request that cannot be routed: status 404 (unknown model) or 503 (nothing usable)."""

    status = 404


class AllFailed(StatusError):
    """Every endpoint failed; status is 502, 503 or 504 by the last cause."""

    def __init__(self, errors: list, attempts: int):
        last = errors[-1][1]
        summary = "; ".join(f"{label}: {e.message}" for label, e in errors[-3:])
        headers = {"x-should-retry": "false", "x-bitrouter-attempts": str(attempts)}
        if last.retry_after:
            headers["retry-after"] = str(int(last.retry_after + 0.999))
        status = 504 if last.kind == "timeout" else 503 if last.status in (429, 503, 529) else 502
        super().__init__(f"all {attempts} upstream attempt(s) failed: {summary}", status, headers)
        self.attempts = attempts
        self.retry_after = last.retry_after


@dataclass
class Route(Alias):
    """A resolved model name: an alias's fields plus where the route came from."""

    source: str = "alias"  # dynamic | direct | alias | bare


@dataclass
class EndpointHealth:
    """What BitRouter has seen of one provider:model_id endpoint."""

    failures: int = 0  # consecutive
    cooling_until: float = 0.0
    last_error: str = ""
    last_status: int | None = None
    requests: int = 0
    errors: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=500))

    def state(self, now: float) -> str:
        """ok, failing (recent consecutive failures) or cooling down, as of `now`."""
        if self.cooling_until > now:
            return "cooling down"
        return "failing" if self.failures else "ok"


class Health:
    """Endpoint health and round-robin counters; lives as long as the server, across reloads."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.endpoints = {}
        self._counters = {}

    def of(self, label: str) -> EndpointHealth:
        """The endpoint's health record, created on first sight."""
        h = self.endpoints.get(label)
        if h is None:
            h = self.endpoints[label] = EndpointHealth()
        return h

    def cooling(self, label: str) -> bool:
        """Whether the endpoint is in cooldown right now."""
        return self.of(label).cooling_until > self.clock()

    def success(self, label: str, latency_ms: float) -> None:
        """Count an answered attempt: the failure streak and any cooldown end."""
        h = self.of(label)
        h.failures, h.cooling_until = 0, 0.0
        h.requests += 1
        h.latencies.append(latency_ms)

    def failure(self, label: str, error: UpstreamError, route: Route) -> None:
        """Count a failure; enough in a row (or a Retry-After) puts the endpoint in cooldown."""
        h = self.of(label)
        h.failures += 1
        h.requests += 1
        h.errors += 1
        h.last_error, h.last_status = error.message[:200], error.status
        pause = error.retry_after or 0.0
        if h.failures >= route.cooldown_failures:
            pause = max(pause, route.cooldown_seconds)
        if pause:
            h.cooling_until = max(h.cooling_until, self.clock() + pause)

    def next_turn(self, route_name: str) -> int:
        """A per-route counter for load balancing that survives reloads."""
        counter = self._counters.get(route_name)
        if counter is None:
            counter = self._counters[route_name] = itertools.count()
        return next(counter)


class Router:
    """The routing table of one runtime: aliases and providers from config, plus dynamic routes."""

    def __init__(self, cfg, dynamic: dict, health: Health):
        self.cfg = cfg
        self.dynamic = dynamic  # name -> Route, shared with the server so it survives reloads
        self.health = health
        self._catalog = None  # model id -> configured providers whose catalog lists it, built on demand
        self._aliases = {}  # alias name -> its Route, made once per configuration (Routes are never changed in place)

    def resolve(self, model: str) -> Route:
        """Dynamic routes, then `provider:model_id`, then aliases, then a bare catalog id; else 404.

        A bare id (`gpt-4o`, as agents send by default) resolves when exactly one configured
        provider's catalog has it (routing.bare_models: unique); several make a 404 that
        lists the `provider:model_id` choices.
        """
        route = self.dynamic.get(model)
        if route is not None:
            return route
        provider, sep, model_id = model.partition(":")
        if sep and model_id and provider in self.cfg.providers:
            return Route(name=model, source="direct", strategy="priority",
                         endpoints=[Endpoint(provider, model_id)], **self.cfg.routing)
        route = self._aliases.get(model)
        if route is not None:
            return route
        alias = self.cfg.models.get(model)
        if alias is not None:
            route = self._aliases[model] = route_from_alias(alias)
            return route
        owners = self._owners(model)
        if len(owners) == 1:
            return Route(name=model, source="bare", strategy="priority",
                         endpoints=[Endpoint(owners[0], model)], **self.cfg.routing)
        if owners:
            choices = ", ".join(f"{p}:{model}" for p in owners)
            raise RouteError(f"model {model!r} is offered by several configured providers; ask for one "
                             f"of {choices}, or add an alias for it under `models:`", 404)
        raise RouteError(f"unknown model {model!r}{self._suggestions(model)}", 404)

    def candidates(self, route: Route) -> list:
        """Usable endpoints in the order to try them; endpoints cooling down go last."""
        usable = [e for e in route.endpoints if e.api_key or self._provider_ready(e.provider)]
        if not usable:
            missing = ", ".join(sorted({f"{e.provider} (set {self.cfg.providers[e.provider].env_prefix}_API_KEY)"
                                        for e in route.endpoints}))
            raise RouteError(f"no API key configured for model {route.name!r}: {missing}", 503)
        if route.strategy == "load_balance" and len(usable) > 1:
            wheel = [i for i, e in enumerate(usable) for _ in range(e.weight)]
            start = wheel[self.health.next_turn(route.name) % len(wheel)]
            usable = usable[start:] + usable[:start]
        if len(usable) == 1:
            return usable
        return sorted(usable, key=lambda e: self.health.cooling(e.label))  # stable: order kept within each group

    def dispatch(self, route: Route, attempt, sleep=time.sleep):
        """Call attempt(endpoint) down the candidates until one succeeds.

        Returns (result, attempts). Retryable failures move on to the next endpoint; a
        request error (4xx) is raised at once with its attempt count. On the last
        endpoint a short Retry-After (<= max_retry_wait) is waited out once.
        """
        queue = self.candidates(route)
        errors, attempts, waited = [], 0, False
        while queue:
            endpoint = queue.pop(0)
            attempts += 1
            started = time.monotonic()
            try:
                result = attempt(endpoint)
            except UpstreamError as exc:
                exc.attempts = attempts
                if not exc.retryable:
                    raise
                self.health.failure(endpoint.label, exc, route)
                errors.append((endpoint.label, exc))
                _log_failure(endpoint, exc, more=bool(queue))
                wait = exc.retry_after
                if not queue and not waited and wait is not None and wait <= route.max_retry_wait:
                    waited = True
                    sleep(wait)
                    queue.append(endpoint)
                continue
            self.health.success(endpoint.label, (time.monotonic() - started) * 1000)
            return result, attempts
        raise AllFailed(errors, attempts)

    def listing(self) -> list[dict]:
        """Every alias and dynamic route with its strategy and endpoint chain."""
        routes = [route_from_alias(a) for a in self.cfg.models.values() if a.name not in self.dynamic]
        routes += list(self.dynamic.values())
        return [describe(r) for r in sorted(routes, key=lambda r: r.name)]

    def _owners(self, model_id: str) -> list:
        """The configured providers whose catalog lists model_id (none when bare names are off)."""
        if self.cfg.bare_models == "off":
            return []
        if self._catalog is None:
            self._catalog = {}
            for name in sorted(self.cfg.providers):
                provider = self.cfg.providers[name]
                if provider.configured:
                    for mid in provider.models:
                        self._catalog.setdefault(mid, []).append(name)
        return self._catalog.get(model_id, [])

    def _provider_ready(self, name: str) -> bool:
        provider = self.cfg.providers.get(name)
        return provider is not None and provider.configured

    def _suggestions(self, model: str) -> str:
        names = list(self.dynamic) + list(self.cfg.models)
        for pname, provider in self.cfg.providers.items():
            if provider.configured:
                names += [f"{pname}:{m}" for m in provider.models]
        close = difflib.get_close_matches(model, names, n=3, cutoff=0.5)
        hint = "; did you mean " + ", ".join(repr(c) for c in close) + "?" if close else ""
        return hint + " (use an alias from `models:` or provider:model_id)"


def _log_failure(endpoint, exc: UpstreamError, more: bool) -> None:
    """One line per failed attempt; a rejected key is the operator's to fix, so it says so."""
    what = f"HTTP {exc.status}" if exc.status else exc.kind
    if exc.status in (401, 403):
        what += f", the provider rejected BitRouter's key for {endpoint.provider}"
    log.warning("upstream %s failed (%s): %s%s", endpoint.label, what, exc.message[:200],
                "; trying the next endpoint" if more else "")


def route_from_alias(alias: Alias) -> Route:
    """A configured alias as a Route."""
    return Route(**vars(alias), source="alias")


def dynamic_route(spec: dict, providers: dict, routing: dict) -> Route:
    """Validate an `/admin/routes` body into a Route; raises ValueError with the problem."""
    name = spec.get("model") or spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("'model' (the route name) is required")
    try:
        strategy, endpoints = route_parts(spec, providers)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return Route(name=name, source="dynamic", strategy=strategy, endpoints=endpoints, **routing)


def describe(route: Route) -> dict:
    """A route as JSON for the admin API and the dashboard (no secrets)."""
    return {"model": route.name, "source": route.source, "strategy": route.strategy,
            "endpoints": [{"provider": e.provider, "model_id": e.model_id, "weight": e.weight,
                           "override": bool(e.api_key or e.api_base)} for e in route.endpoints]}
