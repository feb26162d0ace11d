"""The headline numbers, measured the way gateways publish theirs: nginx upstream, wrk client.

nginx (one worker, loopback) answers a canned Chat Completions reply, or a 50-frame SSE
reply, from a config in a temporary directory: the physical limit. wrk drives it directly,
through BitRouter (one process, auth off) and through scripts/minimal_relay.py (the same
stack with nothing else in it: the ceiling), in one run, so every target is a ratio; the
compared runs alternate in rounds, so a busy moment of the shared machine hits them alike.
Streaming is timed with bench.py's small client; 1,000 concurrent streams are held
against a drip upstream (a frame every 0.1 s). `BENCH_SECONDS` shortens or lengthens each
wrk run (6 s); `BENCH_PEERS=1` adds LiteLLM's proxy, installed into its own venv, to the
throughput rounds. Beside req/s, the throughput rounds and the observers' rounds report each
server's CPU time a request (its child processes included), read from /proc. The observers
(metrics, spend rows, events) are measured by switching them off and on in the same
processes (`observers_switched`).
"""

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent

import bench

SECONDS = int(os.environ.get("BENCH_SECONDS", "6"))
ROUNDS = 3  # the compared runs alternate in this many rounds of SECONDS / ROUNDS each
OBSERVER_ROUNDS = 32  # rounds of a second each of two servers, their observers on in half of them
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FRAMES = 50
# A provider key of a real key's length: a key that is also a word of every reply (the
# alias `bench`) would make every redaction pass do its work, which no real key does.
KEY = "sk-bench-7f3a9c2e5b8d1f4a6c0e9b2d"
# The minimal relays (scripts/minimal_relay.py) by the upstream client they call with: urllib3,
# as issue 13 set the stack's ceiling, and BitRouter's own (what is left is the pipeline).
RELAYS = {"relay": "urllib3", "lean_relay": "bitrouter"}
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "hello"}]}
MESSAGES = {"model": "bench", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}
SSE_BODY = "".join(
    ['data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
     '"delta":{"role":"assistant","content":""}}]}\n\n']
    + ['data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
       '"delta":{"content":"word "}}]}\n\n'] * (FRAMES - 4)
    + ['data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
       '"delta":{},"finish_reason":"stop"}]}\n\n',
       'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
       '"usage":{"prompt_tokens":5,"completion_tokens":46,"total_tokens":51}}\n\n', "data: [DONE]\n\n"])
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = %s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests":%%d,"seconds":%%.3f,"errors":%%d,"non2xx":%%d,"p50_ms":%%.3f,"p99_ms":%%.3f}\\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def run() -> dict:
    """Every wrk measurement in one run; returns the report's `wrk` part."""
    ensure_tools()
    report = {"seconds_per_run": SECONDS}
    peers = os.environ.get("BENCH_PEERS") == "1"
    with Upstreams() as up, Gateway("relay", up) as relay, Gateway("lean_relay", up) as lean, \
            Gateway("bitrouter", up) as br, (Gateway("litellm", up) if peers else contextlib.nullcontext()) as litellm:
        targets = {"direct": up.port, "relay": relay.port, "lean_relay": lean.port, "bitrouter": br.port}
        report["rss_mb_idle"] = rss_mb(br.proc.pid)
        for name, port in targets.items():  # warm every path (connections, code) before timing
            wrk(port, "/v1/chat/completions", CHAT, 1, 1.0)
        report["latency_c1"] = interleaved(targets, 1)
        if litellm:  # in the same rounds as the others, so its ratio is one period's
            wrk(litellm.port, "/v1/chat/completions", CHAT, 32, 2.0)
            targets["litellm"] = litellm.port
        processes = {"direct": up.nginx.pid, "relay": relay.proc.pid, "lean_relay": lean.proc.pid,
                     "bitrouter": br.proc.pid, **({"litellm": litellm.proc.pid} if litellm else {})}
        report["throughput_c32"] = interleaved(targets, 32, processes=processes)
        report["rss_mb_loaded"] = rss_mb(br.proc.pid)
        if litellm:
            del targets["litellm"]
            report["litellm"] = {"version": litellm_version(), "rss_mb": rss_mb(litellm.proc.pid),
                                 "latency_c1": wrk(litellm.port, "/v1/chat/completions", CHAT, 1, SECONDS)}
        wrk(br.port, "/v1/messages", MESSAGES, 1, 1.0)
        report["translated_c1"] = interleaved({"passthrough": br.port,
                                               "anthropic_to_chat": (br.port, "/v1/messages", MESSAGES)}, 1)
        report["streaming"] = {name: stream_times(port, "/v1/chat/completions" if name == "bitrouter"
                                                  else "/sse/v1/chat/completions", n=300)
                               for name, port in targets.items()}
        report["streams_held"] = streams_held(br, up, 1000)
    with Upstreams() as up, Gateway("bitrouter", up, extra={"guardrails": {"enabled": False}}) as plain:
        report["streaming"]["bitrouter_guardrails_off"] = stream_times(plain.port, "/v1/chat/completions", n=300)
    with Upstreams() as up, Gateway("bitrouter", up, switchable=True) as one, \
            Gateway("bitrouter", up, switchable=True) as other:
        for server in (one, other):
            wrk(server.port, "/v1/chat/completions", CHAT, 32, 1.0)
        with dashboard_attached(one.port), dashboard_attached(other.port):
            report["observers"] = observers_switched([one, other], OBSERVER_ROUNDS)
    report["summary"] = summary(report)
    return report


def summary(report: dict) -> dict:
    """The targets as ratios of one run."""
    lat, rps = report["latency_c1"], report["throughput_c32"]
    added = {name: {p: round(lat[name][p] - lat["direct"][p], 3) for p in ("p50_ms", "p99_ms")}
             for name in ("relay", "lean_relay", "bitrouter")}
    out = {"rps": {name: round(r["rps"]) for name, r in rps.items()}, "added_c1": added}
    for relay in RELAYS:  # the targets against the relay, and against one with BitRouter's own client
        out[f"rps_vs_{relay}"] = round(rps["bitrouter"]["rps"] / rps[relay]["rps"], 3)
        out[f"added_p50_vs_{relay}"] = _ratio(added["bitrouter"]["p50_ms"], added[relay]["p50_ms"])
        out[f"added_p99_vs_{relay}"] = _ratio(added["bitrouter"]["p99_ms"], added[relay]["p99_ms"])
    out["translation_added_p50_ms"] = round(report["translated_c1"]["anthropic_to_chat"]["p50_ms"]
                                            - report["translated_c1"]["passthrough"]["p50_ms"], 3)
    observers = report["observers"]
    out["observers_cost"] = round(statistics.median(observers["block_costs"]["rps"]), 3)
    out["observers_cpu_cost"] = round(statistics.median(observers["block_costs"]["cpu"]), 3)
    if "litellm" in rps:
        out["rps_vs_litellm"] = round(rps["bitrouter"]["rps"] / rps["litellm"]["rps"], 1)
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


# ---------------------------------------------------------------- wrk and nginx


def ensure_tools() -> None:
    """Install Debian's nginx and wrk when missing (the bench runs as root on CI machines)."""
    missing = [tool for tool, exe in (("nginx", "nginx"), ("wrk", "wrk")) if not _which(exe)]
    if missing:
        install(*missing)


def install(*packages: str) -> None:
    """Install Debian packages (as root, or through sudo)."""
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Their output goes to stderr: the bench's stdout is its JSON.
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env, stdout=sys.stderr)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, stdout=sys.stderr)


def _which(exe: str):
    return shutil.which(exe) or shutil.which(exe, path="/usr/sbin:/usr/bin:/sbin")


def observers_switched(servers: list, rounds: int) -> dict:
    """wrk (c=32, a second) against each switchable BitRouter in turn, `rounds` times (a
    multiple of four), with its observers on in half of its rounds and off in the other half,
    in blocks of four (on, off, off, on; the next server the other way round). Each server is
    compared with itself, so what sets one process apart from an identical other (its memory
    layout, its hash seed: 5 to 10% of CPU time a request here) cancels out, and each block
    is one estimate of the observers' cost. Req/s and CPU time a request of each state, over
    all servers and per server, and the cost by req/s and by CPU time that every block gives."""
    runs = []  # (server, block, state, requests, seconds, CPU seconds), a round each
    for round_number in range(rounds):
        for i, server in enumerate(servers):
            on = (round_number % 4 in (0, 3)) != (i % 2 == 1)
            server.observe(on)
            before = cpu_seconds(server.proc.pid)
            result = wrk(server.port, "/v1/chat/completions", CHAT, 32, 1.0)
            runs.append((i, round_number // 4, "on" if on else "off", result["requests"], result["seconds"],
                         quiet(server.proc.pid) - before))

    def rates(chosen: list) -> dict:
        requests, seconds, cpu = (sum(column) for column in zip(*(run[3:] for run in chosen)))
        return {"requests": requests, "rps": round(requests / seconds, 1), "cpu_us": round(cpu / requests * 1e6, 1)}

    states = ("on", "off")
    out = {state: rates([run for run in runs if run[2] == state]) for state in states}
    out["servers"] = [{state: rates([run for run in runs if run[0] == i and run[2] == state]) for state in states}
                      for i in range(len(servers))]
    out["block_costs"] = {"rps": [], "cpu": []}
    for i, block in sorted({run[:2] for run in runs}):
        on, off = (rates([run for run in runs if run[:3] == (i, block, state)]) for state in states)
        out["block_costs"]["rps"].append(round(1 - on["rps"] / off["rps"], 4))
        out["block_costs"]["cpu"].append(round(1 - off["cpu_us"] / on["cpu_us"], 4))
    return out


def interleaved(targets: dict, connections: int, rounds: int = ROUNDS, seconds: float = SECONDS,
                processes: dict | None = None) -> dict:
    """wrk against each target in turn, `rounds` times (`seconds` in all for each), so that the
    load other processes put on the machine falls on every target alike: req/s over all the
    rounds, p50 and p99 the median of the rounds'. A target is a port (a Chat Completions
    request) or (port, path, body). Every other round goes in reverse order
    (A B, B A, ...), so a drift in the machine's speed favours no target. With `processes`
    (target -> pid), also each one's CPU time a request, its child processes included, and
    the next round waits until the last one's process has finished its work (LiteLLM goes on
    for a fifth of a second after wrk stops)."""
    processes = processes or {}
    runs = {name: [] for name in targets}
    cpu = dict.fromkeys(targets, 0.0)
    order = list(targets.items())
    for round_number in range(rounds):
        for name, target in (order if round_number % 2 == 0 else order[::-1]):
            port, path, body = target if isinstance(target, tuple) else (target, "/v1/chat/completions", CHAT)
            pid = processes.get(name)
            before = cpu_seconds(pid) if pid else 0.0
            runs[name].append(wrk(port, path, body, connections, seconds / rounds))
            if pid:
                cpu[name] += quiet(pid) - before
    out = {}
    for name, results in runs.items():
        requests, seconds = sum(r["requests"] for r in results), sum(r["seconds"] for r in results)
        out[name] = {"requests": requests, "seconds": round(seconds, 3), "rps": round(requests / seconds, 1),
                     **{p: sorted(r[p] for r in results)[len(results) // 2] for p in ("p50_ms", "p99_ms")},
                     "rounds": [r["rps"] for r in results]}
        if name in processes:
            out[name]["cpu_us"] = round(cpu[name] / requests * 1e6, 1)
    return out


def wrk(port: int, path: str, body: dict, connections: int, seconds: float) -> dict:
    """One wrk run (one thread): requests per second, p50 and p99 in ms, errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % json.dumps(json.dumps(body)))
    try:
        out = subprocess.run([_which("wrk"), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                              "-s", script.name, f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    result = json.loads(out.split("WRK ", 1)[1].splitlines()[0])
    result["rps"] = round(result["requests"] / result["seconds"], 1)
    if result["errors"] or result["non2xx"]:
        raise RuntimeError(f"wrk saw failures on port {port}{path}: {result}")
    return result


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    types {{ }}
    # static files answer only GET: a POST's 405 becomes the canned reply (a GET redirect)
    location = /v1/chat/completions {{ error_page 405 =200 /chat.json; return 405; }}
    location = /sse/v1/chat/completions {{ error_page 405 =200 /sse.txt; return 405; }}
    location = /chat.json {{ internal; root {tmp}; default_type application/json; }}
    location = /sse.txt {{ internal; root {tmp}; default_type text/event-stream; }}
  }}
}}
"""


class Upstreams:
    """nginx with the canned replies, and a drip upstream for held streams."""

    def __enter__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="bitrouter-nginx-")
        self.port, self.drip_port = bench.free_port(), bench.free_port()
        tmp = Path(self.tmp.name)
        (tmp / "chat.json").write_bytes(bench.CHAT_BODY)
        (tmp / "sse.txt").write_text(SSE_BODY)
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=self.port,
                                                          user="user root;" if os.geteuid() == 0 else ""))
        self.nginx = subprocess.Popen([_which("nginx"), "-p", str(tmp), "-c", str(tmp / "nginx.conf")])
        self.drip = subprocess.Popen([sys.executable, bench.__file__, "--drip", str(self.drip_port)])
        try:
            bench.wait_for_port(self.port)
            bench.wait_for_port(self.drip_port)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for proc in (self.nginx, self.drip):
            proc.terminate()
            proc.wait(30)
        self.tmp.cleanup()


class Gateway:
    """BitRouter (`switchable`: its observers switched by `observe`; `extra` merged into its
    config), a minimal relay (RELAYS), or LiteLLM's proxy (one worker, authentication off, in a
    venv of its own)."""

    def __init__(self, kind: str, up: Upstreams, switchable: bool = False, extra: dict | None = None):
        self.kind, self.up, self.switchable, self.extra = kind, up, switchable, extra or {}

    def __enter__(self):
        self.port = bench.free_port()
        scripts = Path(__file__).parent
        base = f"http://127.0.0.1:{self.up.port}"
        if self.kind in RELAYS:
            self.tmp = None
            self.proc = subprocess.Popen([sys.executable, str(scripts / "minimal_relay.py"), str(self.port), base,
                                          RELAYS[self.kind]])
        elif self.kind == "litellm":
            self.tmp = tempfile.TemporaryDirectory(prefix="bitrouter-bench-litellm-")
            self.proc = subprocess.Popen(litellm_command(Path(self.tmp.name), self.port, base),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            self.tmp = tempfile.TemporaryDirectory(prefix="bitrouter-bench-")
            home = Path(self.tmp.name)
            write_home(home, self.port, self.up, self.extra)
            command = [sys.executable, "-c", SWITCHABLE, str(home)] if self.switchable else \
                [str(Path(sys.executable).with_name("bitrouter")), "--home-dir", str(home), "serve"]
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            bench.wait_for_port(self.port, timeout=120 if self.kind == "litellm" else 20)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(30)
        if self.tmp:
            self.tmp.cleanup()

    def observe(self, on: bool, deadline: float = 10.0) -> None:
        """Switch a switchable BitRouter's observers on or off; returns once it has."""
        state, wanted = Path(self.tmp.name, "observers"), "on" if on else "off"
        if (state.read_text() if state.exists() else "on") == wanted:
            return
        self.proc.send_signal(signal.SIGUSR1)
        until = time.monotonic() + deadline
        while not (state.exists() and state.read_text() == wanted):
            if time.monotonic() > until:
                raise RuntimeError(f"BitRouter on port {self.port} did not switch its observers {wanted}")
            time.sleep(0.01)


def write_home(home: Path, port: int, up: Upstreams, extra: dict | None = None) -> None:
    """BitRouter's configuration for the bench: `bench`, `bench-stream` and `bench-drip` on the upstreams."""
    base = f"http://127.0.0.1:{up.port}"
    (home / "bitrouter.yaml").write_text(json.dumps({
        "server": {"listen": f"127.0.0.1:{port}"},
        "providers": {
            "fast": {"derives": "openai", "api_base": f"{base}/v1", "api_key": KEY},
            "sse": {"derives": "openai", "api_base": f"{base}/sse/v1", "api_key": KEY},
            "drip": {"derives": "openai", "api_base": f"http://127.0.0.1:{up.drip_port}/v1", "api_key": KEY}},
        "models": {"bench": {"endpoints": [{"provider": "fast", "model_id": "m"}]},
                   "bench-stream": {"endpoints": [{"provider": "sse", "model_id": "m"}]},
                   "bench-drip": {"endpoints": [{"provider": "drip", "model_id": "m"}]}},
        **(extra or {})}))


# BitRouter without its observers: no metrics counting, no spend rows, no events; the
# request log line and the guardrail sessions still see every request. BARE serves that
# way; SWITCHABLE starts with its observers on, and SIGUSR1 switches them off and on again
# (the state, in the home's file `observers`, says when a switch has taken effect).
_OBSERVERS = """
from gevent import monkey
monkey.patch_all()
import signal, sys
from pathlib import Path
import gevent
from bitrouter import home, metrics, server
def finish(self, record):
    self.running.pop(record.id, None)
    for listener in self.listeners:
        listener(record)
observed = metrics.Metrics.finish, metrics.Metrics._publish
unobserved = finish, lambda self, *a, **k: None
"""
_SERVE = "server.serve(home.resolve(home_dir=sys.argv[1]))\n"
BARE = _OBSERVERS + "metrics.Metrics.finish, metrics.Metrics._publish = unobserved\n" + _SERVE
SWITCHABLE = _OBSERVERS + """
def switch():
    on = metrics.Metrics.finish is observed[0]
    metrics.Metrics.finish, metrics.Metrics._publish = unobserved if on else observed
    Path(sys.argv[1], "observers").write_text("off" if on else "on")
gevent.signal_handler(signal.SIGUSR1, switch)
""" + _SERVE


def dashboard_attached(port: int):
    """A reader of GET /admin/events?brief=1 for the duration (what `bitrouter tui` holds open)."""
    @contextlib.contextmanager
    def attached():
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /admin/events?brief=1 HTTP/1.1\r\nhost: bench\r\n\r\n")
        reader = gevent.spawn(_drain, sock)
        try:
            yield
        finally:
            reader.kill()
            sock.close()
    return attached()


def _drain(sock) -> None:
    while sock.recv(65536):
        pass


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) a process and its children have used so far, in seconds."""
    total = 0
    for member in _family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def quiet(pid: int, deadline: float = 5.0) -> float:
    """Wait (up to `deadline` seconds) until a process uses under a tenth of a core; its CPU seconds then."""
    used, until = cpu_seconds(pid), time.monotonic() + deadline
    while time.monotonic() < until:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now - used < 0.01:
            return now
        used = now
    return used


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (BitRouter's spend writer process), in MB."""
    total = 0
    for member in _family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return round(total / 1024, 1)


def _family(pid: int):
    """A process and its descendants (their pids), from /proc."""
    yield pid
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            yield from _family(int(child))


# ---------------------------------------------------------------- streaming


def stream_times(port: int, path: str, n: int) -> dict:
    """Time to first and to last byte of a 50-frame SSE reply, p50/p99 in ms."""
    body = json.dumps(dict(CHAT, model="bench-stream", stream=True)).encode()
    request = (b"POST %s HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    first, last, buffer = [], [], b""
    for i in range(n + 20):
        started = time.perf_counter()
        sock.sendall(request)
        data = buffer or sock.recv(65536)
        got_first = time.perf_counter()
        head, (payload, buffer) = bench.read_message(sock, data)
        done = time.perf_counter()
        if payload.count(b"data: ") != FRAMES:
            raise RuntimeError(f"stream on port {port} had {payload.count(b'data: ')} frames, not {FRAMES}")
        if i >= 20:  # the first ones warm up
            first.append((got_first - started) * 1000)
            last.append((done - started) * 1000)
    sock.close()
    first.sort()
    last.sort()
    return {"ttfb_p50_ms": bench.pct(first, 50), "ttfb_p99_ms": bench.pct(first, 99),
            "ttlb_p50_ms": bench.pct(last, 50), "ttlb_p99_ms": bench.pct(last, 99)}


def streams_held(br: Gateway, up: Upstreams, count: int) -> dict:
    """`count` concurrent streams through BitRouter from a drip upstream: completed, peak RSS."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * count)), hard))
    body = json.dumps(dict(CHAT, model="bench-drip", stream=True)).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
    complete, peak = [0], [0.0]

    def one():
        with socket.create_connection(("127.0.0.1", br.port), timeout=60) as sock:
            sock.sendall(request)
            _, (payload, _) = bench.read_message(sock, sock.recv(65536))
            if payload.count(b"data: ") == FRAMES and payload.rstrip().endswith(b"[DONE]"):
                complete[0] += 1

    def sample():
        while True:
            peak[0] = max(peak[0], rss_mb(br.proc.pid))
            gevent.sleep(0.1)
    sampler = gevent.spawn(sample)
    started = time.perf_counter()
    greenlets = [gevent.spawn(one) for _ in range(count)]
    gevent.joinall(greenlets, timeout=120)
    elapsed = time.perf_counter() - started
    sampler.kill()
    failures = [repr(g.exception) for g in greenlets if g.exception][:3]
    return {"streams": count, "completed": complete[0], "seconds": round(elapsed, 2),
            "drip": f"{FRAMES} frames, one every {DRIP_INTERVAL} s", "rss_mb_peak": peak[0],
            "rss_mb_after": rss_mb(br.proc.pid), "first_failures": failures}


DRIP_INTERVAL = 0.1


def serve_drip(port: int) -> None:
    """An upstream that answers every request with a 50-frame stream, one frame per interval."""
    from gevent.server import StreamServer

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    frames = [f.encode() + b"\n\n" for f in SSE_BODY.split("\n\n") if f]

    def handle(sock, _addr):
        buffer = b""
        while True:
            head, (_, buffer) = bench.read_message(sock, buffer)
            if head is None:
                return
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for frame in frames:
                gevent.sleep(DRIP_INTERVAL)
                sock.sendall(b"%x\r\n%s\r\n" % (len(frame), frame))
            sock.sendall(b"0\r\n\r\n")
    StreamServer(("127.0.0.1", port), handle, backlog=4096).serve_forever()


# ---------------------------------------------------------------- LiteLLM (BENCH_PEERS=1)


LITELLM_VENV = Path(".bench-peers/litellm")


def litellm_command(tmp: Path, port: int, base: str) -> list:
    """LiteLLM's proxy in front of the bench's nginx (installed into LITELLM_VENV when missing)."""
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, stdout=sys.stderr)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True,
                       stdout=sys.stderr)
    conf = tmp / "litellm.yaml"
    # Authentication off, as BitRouter runs here (recent LiteLLM versions refuse to start so unless told).
    conf.write_text(json.dumps({"model_list": [{"model_name": "bench", "litellm_params": {
        "model": "openai/m", "api_base": f"{base}/v1", "api_key": KEY}}],
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True}}))
    return [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(conf), "--port", str(port),
            "--host", "127.0.0.1", "--num_workers", "1"]


def litellm_version() -> str:
    """The installed LiteLLM's version."""
    return subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                           "import importlib.metadata as m; print(m.version('litellm'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
