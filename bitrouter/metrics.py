"""In-memory request metrics: the live request log, totals, per-endpoint stats and live events.

A finished Record goes at once to every listener (the Server lists guardrail sessions and
the request log) and is then folded in: counted, handed to the deferred listeners (the spend
writer) and announced. Serving, folding waits for a timer, up to FOLD_SECONDS, and takes
every request finished meanwhile in one loop (the bench measured the observers at about 3%
of throughput so, against 6% run once a request: docs/performance.md, round 9). Whatever
reads the counts (`snapshot`, `exported`, a budget check) folds first, so nothing reads
them stale. Events go to subscribers (the dashboard, `/admin/events`) through bounded
inboxes, so a slow reader loses events instead of ever holding up a request. A request is
one `finished` event (a stream also announces itself with `started` when its upstream
answers); with no subscriber nothing is built for them.
"""

import bisect
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import bitrouter
from bitrouter.boundary import redact
from bitrouter.protocols import Usage

log = logging.getLogger("bitrouter")

TOTAL_KEYS = ("requests", "errors", "input_tokens", "output_tokens", "cost_micro_usd")
# Latency histogram bounds in seconds (Prometheus's unit), from a local mock to a long generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
MAX_SERIES = 2000  # distinct label sets per counter; beyond it new routes and endpoints count as "other"
STATE_ORDER = ("ok", "failing", "cooling down")  # a provider shows its worst endpoint's state
FOLD_SECONDS = 0.01  # serving, how long a finished request may wait to be counted and announced


@dataclass
class Record:
    """One proxied request, as logged, billed and shown on the dashboard."""

    id: int
    started: float  # wall-clock seconds
    protocol: str
    model: str
    stream: bool
    upstream: str = ""  # provider:model_id that answered
    status: int = 0  # 0 while running
    latency_ms: float = 0.0
    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_micro_usd: int = 0
    error: str = ""
    account: str = ""
    token_hash: str = ""
    refused: bool = False  # refused before it passed authentication: bills no one
    session: str = ""  # the agent session the client named (guardrails.session_of)
    route: str = ""  # the route the model name resolved to ("" when it did not resolve)

    def as_dict(self) -> dict:
        """The record as JSON-ready data (a fast, flat copy; usage as its own dict)."""
        data = dict(vars(self))
        data["usage"] = dict(vars(self.usage))
        return data


class Subscription:
    """One subscriber's bounded inbox; when full, the oldest item is dropped and counted.

    A brief inbox keeps, of consecutive waiting events of one type, only the newest: its
    reader only learns that something changed, and a busy server would otherwise encode and
    send a frame per request to say the same thing again.
    """

    def __init__(self, keep: int, brief: bool = False):
        self.brief = brief  # events without their request: "something changed" is all this reader needs
        self.items = deque(maxlen=keep)
        self.dropped = 0
        self.closed = False
        self._ready = threading.Event()  # gevent's when patched, so waiting never blocks the server

    def push(self, item) -> None:
        """Queue an item without ever blocking."""
        items = self.items
        if self.brief and items:
            try:
                if items[-1]["type"] == item["type"]:
                    items[-1] = item  # still waiting, so the reader has yet to take it
                    return
            except IndexError:  # the in-process dashboard's thread took it meanwhile
                pass
        if len(items) == items.maxlen:
            self.dropped += 1
        items.append(item)
        self._ready.set()

    def wait(self, timeout: float | None) -> list:
        """Everything queued, after waiting up to timeout for the first item ([] on timeout)."""
        if not self.items and not self.closed:
            self._ready.wait(timeout)
        self._ready.clear()
        out = []
        while self.items:  # popleft, not list()+clear(), so a concurrent push is never lost
            out.append(self.items.popleft())
        return out

    def close(self) -> None:
        """End the subscription; a waiting reader wakes up."""
        self.closed = True
        self._ready.set()


class Metrics:
    """Collects Records, per-endpoint stats and totals; fans events out to subscribers."""

    def __init__(self, keep: int = 500, samples: int = 1000, clock=time.time):
        self.clock = clock
        self.started = clock()
        self.recent = deque(maxlen=keep)
        self.running = {}
        self.listeners = []  # called with each finished Record as it finishes, in order
        self.deferred_listeners = []  # called with each finished Record when it is folded in
        self.timer = None  # a gevent timer watcher that folds when it fires; None: fold at once
        self._unfolded = []  # finished Records not yet counted
        self.subscribers = []
        self.endpoints = {}  # provider:model_id -> EndpointStats
        self.counters = {}  # name -> {labels (sorted pairs) -> value}: Metrics.count's, for GET /metrics
        # (route, endpoint, protocol, status) -> [requests, input tokens, output tokens, micro-USD,
        # count per latency bucket..., +Inf count, sum of seconds]: every finished request, in one
        # place; the totals are summed from it when asked for
        self.series = {}
        self._day = {}  # today's date, and the totals at its start
        self._tomorrow = 0.0  # when today starts afresh (local midnight)
        self._new_day(self.started)
        self.closed = False
        self.guardrails = {}  # (pattern, direction, action) -> hits since start
        self._samples = samples
        self._next_id = 0
        self._seq = 0

    def begin(self, protocol: str, model: str, stream: bool) -> Record:
        """Start a record for a request that has just arrived."""
        self._next_id += 1
        record = Record(id=self._next_id, started=self.clock(), protocol=protocol, model=model, stream=stream)
        self.running[record.id] = record
        return record

    def routed(self, record: Record) -> None:
        """An endpoint answered: a stream is running from now on, so subscribers hear of it."""
        if record.stream and self.subscribers:
            self.fold()  # events in the order things happened: earlier requests' `finished` first
            self._publish("started", record)

    def finish(self, record: Record) -> None:
        """Close a record: the listeners hear of it now; it is counted once the timer folds it in."""
        self.running.pop(record.id, None)
        self.recent.append(record)
        for listener in self.listeners:
            listener(record)
        self._unfolded.append(record)
        if self.timer is None or self.closed:
            self.fold()
        elif not self.timer.active:
            self.timer.start(self.fold)

    def fold(self) -> None:
        """Count every finished record not yet counted and tell the deferred listeners and subscribers."""
        records, self._unfolded = self._unfolded, []
        for record in records:
            try:
                self._fold_one(record)
            except Exception:  # a defect here must not cost the rest of the batch their spend rows
                log.exception("cannot count request %s", record.id)

    def guardrail(self, record: Record, hits: list) -> None:
        """Count guardrail hits (never the matched text) and announce them as a `guardrail` event."""
        for hit in hits:
            key = (hit.pattern, hit.direction, hit.action)
            self.guardrails[key] = self.guardrails.get(key, 0) + hit.count
            self.count("guardrail_hits", hit.count, pattern=hit.pattern, direction=hit.direction, action=hit.action)
        if self.subscribers:
            self.fold()
            self._publish("guardrail", record, hits=[hit.as_dict() for hit in hits])

    def count(self, name: str, value: float = 1, **labels) -> None:
        """Add to a named counter (tokens, cost, guardrail hits...); GET /metrics exports every one."""
        series = self.counters.setdefault(name, {})
        key = tuple(sorted(labels.items()))
        if key not in series and len(series) >= MAX_SERIES:
            key = tuple((k, "other" if k in ("route", "endpoint") else v) for k, v in key)
        series[key] = series.get(key, 0) + value

    def subscribe(self, keep: int = 1000, brief: bool = False) -> Subscription:
        """A new event inbox; events are {"type", "seq", "request"} dicts, {"type", "seq"} when brief."""
        sub = Subscription(keep, brief)
        if self.closed:
            sub.close()
        else:
            self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering events to sub (its reader has gone)."""
        if sub in self.subscribers:
            self.subscribers.remove(sub)

    def close(self) -> None:
        """Fold in what waits and end every subscription (the server is stopping); from now on
        a finished record is folded in at once, and a new subscription starts closed."""
        self.fold()
        self.closed = True
        for sub in self.subscribers:
            sub.close()
        self.subscribers = []

    def snapshot(self, recent: int = 100) -> dict:
        """Running and recent requests (newest first), totals since start and for today."""
        self.fold()
        recent = max(0, min(recent, len(self.recent)))
        totals = self._totals()
        return {"running": [r.as_dict() for r in sorted(self.running.values(), key=lambda r: -r.id)],
                "recent": [self.recent[-i].as_dict() for i in range(1, recent + 1)],
                "totals": {"since_start": totals, "today": self._today(totals)},
                "guardrails": [{"pattern": p, "direction": d, "action": a, "hits": n}
                               for (p, d, a), n in sorted(self.guardrails.items())]}

    def exported(self) -> tuple[dict, dict]:
        """(counters, latency) for GET /metrics: {name: {sorted label pairs: value}} and
        {sorted label pairs: [count per bucket..., +Inf count, sum of seconds]}."""
        self.fold()
        counters = {name: dict(series) for name, series in self.counters.items()}
        requests, tokens, cost, latency = {}, {}, {}, {}
        for (route, endpoint, protocol, status), row in self.series.items():
            requests[(("endpoint", endpoint), ("protocol", protocol), ("route", route), ("status", status))] = row[0]
            if row[1] or row[2]:
                for kind, value in (("input", row[1]), ("output", row[2])):
                    key = (("endpoint", endpoint), ("kind", kind), ("route", route))
                    tokens[key] = tokens.get(key, 0) + value
            if row[3]:
                key = (("endpoint", endpoint), ("route", route))
                cost[key] = cost.get(key, 0) + row[3]
            key = (("endpoint", endpoint), ("route", route), ("status", status))
            counts = latency.get(key)
            latency[key] = row[4:] if counts is None else [a + b for a, b in zip(counts, row[4:])]
        for name, series in (("requests", requests), ("tokens", tokens), ("cost_micro_usd", cost)):
            if series:
                counters[name] = series
        return counters, latency

    def _fold_one(self, record: Record) -> None:
        """Count one finished record, hand it to the deferred listeners, announce it."""
        if record.started >= self._tomorrow:  # the first request of a new day
            self._new_day()
        self._count_series(record, record.usage)
        if record.upstream:
            stats = self.endpoints.get(record.upstream)
            if stats is None:
                stats = self.endpoints[record.upstream] = EndpointStats(deque(maxlen=self._samples))
            stats.add(record.latency_ms, record.status >= 400)
        for listener in self.deferred_listeners:
            listener(record)
        if self.subscribers:
            self._publish("finished", record)

    def _count_series(self, record: Record, usage: Usage) -> None:
        """Count a finished request into its (route, endpoint, protocol, status) row."""
        key = (record.route, record.upstream, record.protocol, str(record.status))
        row = self.series.get(key)
        if row is None:
            if len(self.series) >= MAX_SERIES:  # arbitrary model names must not grow it without end
                key = ("other", "other", record.protocol, key[3])
            row = self.series.get(key)
            if row is None:
                row = self.series[key] = [0, 0, 0, 0] + [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
        seconds = record.latency_ms / 1000
        row[0] += 1
        row[1] += usage.input
        row[2] += usage.output
        row[3] += record.cost_micro_usd
        row[4 + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        row[-1] += seconds

    def _totals(self) -> dict:
        """Requests, errors, tokens and cost since start, summed from the series."""
        totals = dict.fromkeys(TOTAL_KEYS, 0)
        for (_route, _endpoint, _protocol, status), row in self.series.items():
            totals["requests"] += row[0]
            totals["errors"] += row[0] if int(status) >= 400 else 0
            totals["input_tokens"] += row[1]
            totals["output_tokens"] += row[2]
            totals["cost_micro_usd"] += row[3]
        return totals

    def _today(self, totals: dict) -> dict:
        """Today's totals (local date), from the totals since start; afresh after midnight."""
        if self.clock() >= self._tomorrow:
            self._new_day()
        start = self._day["start"]
        return {"date": self._day["date"], **{key: totals[key] - start[key] for key in TOTAL_KEYS}}

    def _new_day(self, now: float | None = None) -> None:
        """Start today's totals afresh (from the totals so far) and note when tomorrow begins."""
        now = self.clock() if now is None else now
        day = time.localtime(now)
        self._day = {"date": time.strftime("%Y-%m-%d", day), "start": self._totals()}
        self._tomorrow = time.mktime((day.tm_year, day.tm_mon, day.tm_mday + 1, 0, 0, 0, 0, 0, -1))

    def _publish(self, kind: str, record: Record, **extra) -> None:
        """One event, built once for every subscriber that wants it whole (a copy, so later changes
        stay out) and once for every brief one."""
        self._seq += 1
        whole = brief = None
        for sub in self.subscribers:
            if sub.brief:
                brief = brief or {"type": kind, "seq": self._seq}
                sub.push(brief)
            else:
                whole = whole or {"type": kind, "seq": self._seq, "request": record.as_dict(), **extra}
                sub.push(whole)


@dataclass
class EndpointStats:
    """Requests answered by one endpoint: counts and a bounded window of latencies."""

    latencies: deque
    requests: int = 0
    errors: int = 0

    def add(self, latency_ms: float, failed: bool) -> None:
        """Count one finished request and keep its latency in the window."""
        self.requests += 1
        self.errors += failed
        self.latencies.append(latency_ms)


def dashboard(metrics: Metrics, rt, health, *, mode: str, port: int | None, started: float,
              auth_required: bool, connections=None, recent: int = 100) -> dict:
    """The `/admin/metrics` snapshot (docs/tui.md documents the shape).

    rt is the serving Runtime (configuration, router, providers, secrets), health the router's
    Health; port is the bound one (None: the configured), connections the listener's counts.
    """
    now = time.time()
    secrets = rt.secrets
    data = metrics.snapshot(recent)
    for record in data["running"] + data["recent"]:
        record["error"] = redact(record["error"], secrets)
    host, configured_port = rt.cfg.host_port
    routes = rt.router.listing()
    return {"version": bitrouter.__version__, "pid": os.getpid(), "time": now,
            "listen": f"http://{_url_host(host)}:{port or configured_port}",
            "mode": mode, "auth_mode": rt.cfg.auth["mode"], "auth_required": auth_required,
            "started": started, "uptime_seconds": round(now - started, 1),
            "connections": {"open": connections.connections, "capacity": connections.capacity}
            if connections is not None else None,
            "providers": providers(rt, routes, health, metrics.endpoints, secrets),
            "routes": routes, **data}


def providers(rt, routes: list, health, stats: dict, secrets) -> list[dict]:
    """Per-provider rows: health from the router, traffic and p50 from the metrics.

    Listed: providers with a key, providers any route names, and any that saw traffic.
    """
    names = set(rt.cfg.configured_providers())
    names.update(e["provider"] for r in routes for e in r["endpoints"])
    seen = set(stats) | set(health.endpoints)
    names.update(label.partition(":")[0] for label in seen)
    now = health.clock()
    rows = []
    for name in sorted(n for n in names if n in rt.providers):
        provider = rt.providers[name]
        labels = sorted(label for label in seen if label.partition(":")[0] == name)
        endpoints = [_endpoint_row(label, health, stats, now, secrets) for label in labels]
        state = _worst([e["state"] for e in endpoints]) if provider.configured else "no key"
        troubled = [e for e in endpoints if e["state"] != "ok"] + endpoints
        latencies = [x for label in labels if label in stats for x in stats[label].latencies]
        rows.append({"name": name, "protocol": provider.api_protocol, "configured": provider.configured,
                     "state": state,
                     "cooling_seconds": max([e["cooling_seconds"] for e in endpoints], default=0),
                     "last_error": next((e["last_error"] for e in troubled if e["last_error"]), ""),
                     "requests": sum(e["requests"] for e in endpoints),
                     "errors": sum(e["errors"] for e in endpoints),
                     "p50_ms": percentile(latencies, 50), "endpoints": endpoints})
    return rows


def percentile(samples, p: float) -> float | None:
    """Nearest-rank percentile (None without samples)."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = min(len(ordered), max(1, math.ceil(p / 100 * len(ordered))))
    return round(ordered[rank - 1], 1)


def cost_micro_usd(usage: Usage, pricing: dict) -> int:
    """Cost in micro-USD from USD-per-million prices, rounded up (budgets must not leak).

    Input tokens include cached ones: those are billed at the cache prices (the input
    price when a cache price is unknown), the rest at `input`. Output includes reasoning:
    billed at `reasoning` when priced, else `output`. A model with no prices costs 0.
    """
    input_price = pricing.get("input", 0)
    output_price = pricing.get("output", 0)
    fresh = max(0, usage.input - usage.cache_read - usage.cache_write)
    text = max(0, usage.output - usage.reasoning)
    micro = (fresh * input_price + usage.cache_read * pricing.get("cache_read", input_price)
             + usage.cache_write * pricing.get("cache_write", input_price) + text * output_price
             + usage.reasoning * pricing.get("reasoning", output_price))
    return math.ceil(micro - 1e-9)  # tokens x USD per million tokens = micro-USD


# ---------------------------------------------------------------- helpers


def _endpoint_row(label: str, health, stats: dict, now: float, secrets) -> dict:
    """One endpoint: the router's view (attempts, cooldown) plus answered requests' latency."""
    h = health.endpoints.get(label)
    s = stats.get(label)
    # Health counts every attempt, including failed ones that moved on to the next endpoint;
    # a broken stream is only in the metrics, since the attempt itself had succeeded.
    return {"endpoint": label, "state": h.state(now) if h else "ok",
            "cooling_seconds": round(max(0.0, h.cooling_until - now), 1) if h else 0,
            "last_error": redact(h.last_error, secrets) if h else "",
            "requests": h.requests if h else s.requests,
            "errors": (h.errors if h else 0) + (s.errors if s else 0),
            "p50_ms": percentile(s.latencies, 50) if s else None}


def _worst(states: list) -> str:
    return max(states, key=STATE_ORDER.index, default="ok")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

