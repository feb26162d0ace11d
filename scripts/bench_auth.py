"""`make bench`, access control part: what token checks and spend logging add. Prints one JSON object.

Two BitRouter processes share one fast local upstream (scripts/bench.py's): one with no
account (auth off, open on loopback) and one with an account whose token every request
carries (auth on). Sequential requests alternate between them in blocks, so drift on a
shared machine hits both alike. Then the auth-on server takes concurrent load, is stopped
cleanly, and its spend log must hold exactly one row per request served.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the upstream, the HTTP reader and the percentile helper)

ADDED_P50_LIMIT_MS = 0.3
EXE = Path(sys.executable).with_name("bitrouter")
PATH = "/v1/chat/completions"


def run() -> dict:
    """Measure auth off vs on, then the spend writer under load; the report as a dict."""
    with tempfile.TemporaryDirectory(prefix="bitrouter-bench-auth-") as tmp:
        up_port = bench.free_port()
        upstream = subprocess.Popen([sys.executable, bench.__file__, "--upstream", str(up_port)])
        try:
            bench.wait_for_port(up_port)
            off = Proxy(Path(tmp) / "off", up_port, account=False)
            on = Proxy(Path(tmp) / "on", up_port, account=True)
            try:
                report = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                          "latency_c1": added_latency(off, on, blocks=10, per_block=200),
                          "spend_writer_c32": spend_under_load(on, concurrency=32, seconds=5.0)}
            finally:
                off.stop()
                on.stop()
        finally:
            upstream.terminate()
            upstream.wait(10)
    report["ok"] = (report["latency_c1"]["added_p50_ms"] < ADDED_P50_LIMIT_MS
                    and report["spend_writer_c32"]["requests_missing"] == 0)
    return report


def added_latency(off, on, blocks: int, per_block: int) -> dict:
    """Sequential requests, alternating blocks between the two servers; p50/p99 of each."""
    for proxy in (off, on):
        proxy.timed(200)  # warm up connections, caches and code paths
    times = {"off": [], "on": []}
    for _ in range(blocks):
        times["off"] += off.timed(per_block)
        times["on"] += on.timed(per_block)
    off_sorted, on_sorted = sorted(times["off"]), sorted(times["on"])
    return {"auth_off_p50_ms": bench.pct(off_sorted, 50), "auth_on_p50_ms": bench.pct(on_sorted, 50),
            "auth_off_p99_ms": bench.pct(off_sorted, 99), "auth_on_p99_ms": bench.pct(on_sorted, 99),
            "added_p50_ms": round(bench.pct(on_sorted, 50) - bench.pct(off_sorted, 50), 3),
            "limit_ms": ADDED_P50_LIMIT_MS}


def spend_under_load(proxy, concurrency: int, seconds: float) -> dict:
    """Requests per second with tokens, then a clean stop: every request must have its row."""
    done = [0]
    deadline = time.perf_counter() + seconds

    def worker():
        client = bench.Client(proxy, proxy.token)
        while time.perf_counter() < deadline:
            client.post(PATH, bench.REQUEST)
            done[0] += 1
        client.close()
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    proxy.requests_expected += done[0]
    stop_started = time.perf_counter()
    proxy.stop()
    logged = proxy.spend_requests()
    return {"rps": round(done[0] / elapsed, 1), "load_requests": done[0],
            "requests_total": proxy.requests_expected, "requests_logged": logged,
            "requests_missing": proxy.requests_expected - logged,
            "stop_seconds": round(time.perf_counter() - stop_started, 2)}


class Proxy:
    """A `bitrouter serve` process in its own home; with `account`, requests carry a token."""

    def __init__(self, home: Path, up_port: int, account: bool):
        home.mkdir()
        self.home, self.port = home, bench.free_port()
        (home / "bitrouter.yaml").write_text(json.dumps({
            "server": {"listen": f"127.0.0.1:{self.port}"},
            "providers": {"fast": {"derives": "openai", "api_base": f"http://127.0.0.1:{up_port}/v1",
                                   "api_key": "bench", "models": {"m": {"pricing": {"input": 1, "output": 2}}}}},
            "models": {"bench": {"endpoints": [{"provider": "fast", "model_id": "m"}]}}}))
        self.token = None
        if account:
            cli = [str(EXE), "--home-dir", str(home)]
            subprocess.run(cli + ["account", "-g"], check=True, capture_output=True)
            self.token = subprocess.run(cli + ["keygen", "--exp", "1h"], check=True, capture_output=True,
                                        text=True).stdout.strip()
        self.proc = subprocess.Popen([str(EXE), "--home-dir", str(home), "serve"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.requests_expected = 0
        bench.wait_for_port(self.port)

    def timed(self, n: int) -> list[float]:
        client = bench.Client(self, self.token)
        times = []
        for _ in range(n):
            started = time.perf_counter()
            client.post(PATH, bench.REQUEST)
            times.append((time.perf_counter() - started) * 1000)
        client.close()
        self.requests_expected += n
        return times

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def spend_requests(self) -> int:
        """Requests the spend log holds."""
        with sqlite3.connect(self.home / "bitrouter.db") as conn:
            return conn.execute("select coalesce(sum(requests), 0) from spend_logs").fetchone()[0]



if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
