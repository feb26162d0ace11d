"""`GET /metrics`: the server's metrics in the Prometheus text format, via prometheus_client.

Nothing is counted here: every request is counted once in bitrouter/metrics.py, and this
module turns that state into metric families when a scraper asks. Any counter added with
`Metrics.count(name, ...)` is exported as `bitrouter_<name>_total` without a change here.
"""

import os
import time

import bitrouter
from bitrouter.metrics import LATENCY_BUCKETS

PREFIX = "bitrouter_"
# Help lines for the counters metrics.py keeps; others get a generic one.
HELP = {
    "requests": "Finished requests by route, answering endpoint, client protocol and status.",
    "tokens": "Tokens by kind (input, output), route and answering endpoint.",
    "cost_micro_usd": "Cost in micro-USD (1 USD = 1000000) by route and answering endpoint.",
}


def exposition(srv, accept: str = "") -> tuple[bytes, str]:
    """The scrape body for a Server and its content type (OpenMetrics when the scraper asks)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(srv))
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


class _Collector:
    """A prometheus_client collector reading one Server's metrics and router health."""

    def __init__(self, srv):
        self.srv = srv

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        metrics, health = self.srv.metrics, self.srv.health
        info = GaugeMetricFamily(PREFIX + "info", "BitRouter version and process.", labels=["version", "pid"])
        info.add_metric([bitrouter.__version__, str(os.getpid())], 1)
        yield info
        yield GaugeMetricFamily(PREFIX + "uptime_seconds", "Seconds since the server started.",
                                value=round(time.time() - self.srv.started, 3))
        counters, latencies = metrics.exported()
        for name, series in sorted(counters.items()):
            yield _counter(CounterMetricFamily, name, series)
        errors = {}
        for key, value in counters.get("requests", {}).items():
            labels = dict(key)
            if int(labels.get("status") or 0) >= 400:
                errors[key] = value
        yield _counter(CounterMetricFamily, "request_errors", errors,
                       "Finished requests answered with a status of 400 or more.")
        latency = HistogramMetricFamily(PREFIX + "request_duration_seconds",
                                        "Request latency, to the last byte of a stream.",
                                        labels=["endpoint", "route", "status"])
        for key, counts in sorted(latencies.items()):
            labels = dict(key)
            cumulative, buckets = 0, []
            for bound, count in zip(LATENCY_BUCKETS + (float("inf"),), counts):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([labels["endpoint"], labels["route"], labels["status"]], buckets, counts[-1])
        yield latency
        failures = CounterMetricFamily(PREFIX + "upstream_failures", "Failed upstream attempts per endpoint.",
                                       labels=["endpoint", "status"])
        cooling = GaugeMetricFamily(PREFIX + "endpoint_cooldown_seconds",
                                    "Seconds left in an endpoint's cooldown (0 when usable).", labels=["endpoint"])
        now = health.clock()
        for label, h in sorted(health.endpoints.items()):
            failures.add_metric([label, str(h.last_status or "")], h.errors)
            cooling.add_metric([label], round(max(0.0, h.cooling_until - now), 3))
        yield failures
        yield cooling
        running = list(metrics.running.values())
        flight = GaugeMetricFamily(PREFIX + "requests_in_flight", "Requests being answered now.",
                                   labels=["stream"])
        flight.add_metric(["true"], sum(1 for r in running if r.stream))
        flight.add_metric(["false"], sum(1 for r in running if not r.stream))
        yield flight


def _counter(family, name: str, series: dict, help_text: str | None = None):
    """One counter family from a {sorted label pairs: value} map (all keys share label names)."""
    names = sorted({k for key in series for k, _ in key})
    metric = family(PREFIX + name, help_text or HELP.get(name, f"Count of {name.replace('_', ' ')}."),
                    labels=names)
    for key, value in sorted(series.items()):
        labels = dict(key)
        metric.add_metric([str(labels.get(n, "")) for n in names], value)
    return metric
