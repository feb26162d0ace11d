"""In-memory request metrics: the live request log, totals, and listeners for finished requests."""

import time
from collections import deque
from dataclasses import asdict, dataclass, field

from bitrouter.protocols import Usage


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

    def as_dict(self) -> dict:
        return asdict(self)


class Metrics:
    """Collects Records; finished ones go to every listener (spend writer, event streams)."""

    def __init__(self, keep: int = 500):
        self.recent = deque(maxlen=keep)
        self.running = {}
        self.listeners = []
        self.totals = {"requests": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0,
                       "cost_micro_usd": 0}
        self._next_id = 0

    def begin(self, protocol: str, model: str, stream: bool) -> Record:
        """Start a record for a request that has just arrived."""
        self._next_id += 1
        record = Record(id=self._next_id, started=time.time(), protocol=protocol, model=model, stream=stream)
        self.running[record.id] = record
        return record

    def finish(self, record: Record) -> None:
        """Close a record: count it and hand it to the listeners."""
        self.running.pop(record.id, None)
        self.recent.append(record)
        t = self.totals
        t["requests"] += 1
        t["errors"] += record.status >= 400
        t["input_tokens"] += record.usage.input
        t["output_tokens"] += record.usage.output
        t["cost_micro_usd"] += record.cost_micro_usd
        for listener in self.listeners:
            listener(record)


def cost_micro_usd(usage: Usage, pricing: dict) -> int:
    """Cost in micro-USD from USD-per-million prices; a missing price counts as zero.

    Input tokens include cached ones: those are billed at the cache prices, the rest at
    `input`. Output includes reasoning: billed at `reasoning` when priced, else `output`.
    """
    fresh = max(0, usage.input - usage.cache_read - usage.cache_write)
    text = max(0, usage.output - usage.reasoning)
    reasoning_price = pricing.get("reasoning", pricing.get("output", 0))
    dollars_per_million = (fresh * pricing.get("input", 0) + usage.cache_read * pricing.get("cache_read", 0)
                           + usage.cache_write * pricing.get("cache_write", 0) + text * pricing.get("output", 0)
                           + usage.reasoning * reasoning_price)
    return round(dollars_per_million)  # tokens * USD/M = micro-USD
