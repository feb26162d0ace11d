"""Instructions a request, counted by valgrind's callgrind: exact where wrk's times are noisy.

`python scripts/bench_instructions.py` runs each server (the minimal relay with urllib3,
the lean relay with BitRouter's upstream client, BitRouter itself) under callgrind in
front of the bench's nginx, sends WARMUP and then REQUESTS keep-alive requests from one
client, and does the same again with no timed requests: the difference over REQUESTS is
the server's instructions per request, its threads included. Counts repeat to the
instruction, so a change of 1% shows where wrk's rounds move by 10% (docs/performance.md
lists the counts after each change of round 3).

BitRouter is also counted without its observers (no metrics, spend rows or events, as in
bench_wrk's observers pair): the difference is what they cost, a few per cent that wrk's
rounds on this machine cannot resolve. Work on a timer (the spend writer's batches, the
log's flush) is spread over fewer requests under valgrind's slowdown, so its share is
overstated; BitRouter's database poll (every 0.25 s) is switched off for the count.
Installs Debian's valgrind when missing; two servers run at a time; about two minutes.
"""

import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench
import bench_wrk

WARMUP, REQUESTS = 100, 300
# `bitrouter serve` with the revocation and route poll off (its count depends on time, not requests).
SERVE_WITHOUT_POLL = ("import runpy, sys, bitrouter.cluster as cluster; cluster.POLL_SECONDS = 1e9; "
                      "sys.argv[0] = 'bitrouter'; runpy.run_module('bitrouter', run_name='__main__')")
# The same server without its observers (bench_wrk.BARE), the poll off too.
BARE_WITHOUT_POLL = "import bitrouter.cluster as cluster; cluster.POLL_SECONDS = 1e9\n" + bench_wrk.BARE


def main() -> None:
    bench_wrk.ensure_tools()
    if not bench_wrk._which("valgrind"):
        bench_wrk.install("valgrind")
    kinds = [*bench_wrk.RELAYS, "bitrouter", "bitrouter_bare"]
    with bench_wrk.Upstreams() as up, ThreadPoolExecutor(2) as pool:
        counts = dict(zip(kinds, pool.map(lambda kind: per_request(kind, up), kinds)))
    counts["bitrouter_vs_relay"] = round(counts["bitrouter"] / counts["relay"], 3)
    counts["bitrouter_vs_lean_relay"] = round(counts["bitrouter"] / counts["lean_relay"], 3)
    counts["observers_cost"] = round(1 - counts["bitrouter_bare"] / counts["bitrouter"], 3)
    print(json.dumps(counts, indent=2))


def per_request(kind: str, up) -> int:
    """The server's instructions per request: a run with REQUESTS timed requests minus one with none."""
    return (instructions(kind, up, REQUESTS) - instructions(kind, up, 0)) // REQUESTS


def instructions(kind: str, up, requests: int) -> int:
    """Instructions a server executed from its start to its stop, with WARMUP + requests served."""
    port = bench.free_port()
    with tempfile.TemporaryDirectory(prefix="bitrouter-callgrind-") as tmp:
        if kind in bench_wrk.RELAYS:
            command = [sys.executable, str(Path(__file__).with_name("minimal_relay.py")), str(port),
                       f"http://127.0.0.1:{up.port}", bench_wrk.RELAYS[kind]]
        elif kind == "bitrouter_bare":
            bench_wrk.write_home(Path(tmp), port, up)
            command = [sys.executable, "-c", BARE_WITHOUT_POLL, tmp]
        else:
            bench_wrk.write_home(Path(tmp), port, up)
            command = [sys.executable, "-c", SERVE_WITHOUT_POLL, "--home-dir", tmp, "serve"]
        out = Path(tmp) / "callgrind.out"
        # One hash seed for every server, so dicts and sets collide alike in every process; counts
        # of one server still differ by up to about 15K a request (work on timers, under valgrind).
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONHASHSEED": "0"})
        try:
            bench.wait_for_port(port, timeout=180)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            body = json.dumps(bench_wrk.CHAT).encode()
            for _ in range(WARMUP + requests):
                conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
                reply = conn.getresponse()
                reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"{kind} answered HTTP {reply.status}")
            conn.close()
        finally:
            proc.terminate()
            proc.wait(120)
        return int(re.search(r"^summary: (\d+)", out.read_text(), re.M).group(1))


if __name__ == "__main__":
    main()
