"""`make bench`: what BitRouter adds over calling the upstream directly. Prints one JSON object.

The headline numbers (`wrk`) come from scripts/bench_wrk.py: nginx as the upstream, wrk as
the client, BitRouter next to scripts/minimal_relay.py. The rest uses a fast local upstream
(raw gevent sockets, canned replies) and a minimal keep-alive HTTP client on gevent: the
translation and guardrail costs, auth, and 1 against 2 workers. `python scripts/bench.py
--wrk` runs the headline part alone; see docs/performance.md for how to read the numbers.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

CHAT_BODY = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "m",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()
STREAM_FRAMES = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
                 b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n',
                 b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
                 b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}\n\n',
                 b"data: [DONE]\n\n"]
REQUEST = {"model": "bench", "messages": [{"role": "user", "content": "hello"}]}


def main() -> None:
    """Run every measurement and print the JSON report."""
    import bench_wrk
    if sys.argv[1:2] == ["--upstream"]:
        serve_upstream(int(sys.argv[2]))
        return
    if sys.argv[1:2] == ["--drip"]:
        bench_wrk.serve_drip(int(sys.argv[2]))
        return
    import bench_auth
    import bench_guardrails
    import bench_protocols
    report = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    report["wrk"] = bench_wrk.run()
    if sys.argv[1:2] == ["--wrk"]:  # the headline numbers alone
        print(json.dumps(report, indent=2))
        return
    with Stack() as stack:  # the project's own client, for what wrk cannot drive
        report["translation"] = bench_protocols.run(stack)
        report["guardrails"] = bench_guardrails.run(stack)
    report["auth"] = bench_auth.run()
    report["workers"] = workers_scaling(seconds=5.0)
    print(json.dumps(report, indent=2))


# ---------------------------------------------------------------- measurements


def workers_scaling(seconds: float) -> dict:
    """Requests per second at concurrency 32 with `server.workers` 1 and 2 over one SQLite file.

    Every request writes a spend row, so with two workers two processes write one SQLite
    database (WAL); after a clean stop the rows are counted against the requests sent.
    """
    report = {}
    for count in (1, 2):
        with Stack(workers=count) as stack:
            warm = 200
            timed_requests(stack.proxy, warm)
            done, elapsed = load(stack.proxy, 32, seconds)
            stack.stop_proxy()
            with sqlite3.connect(stack.home / "bitrouter.db") as db:
                logged = db.execute("select coalesce(sum(requests), 0) from spend_logs").fetchone()[0]
        report[f"workers_{count}"] = {"rps": round(done / elapsed, 1), "requests": done + warm,
                                      "spend_requests": logged}
    return report


def load(target, concurrency: int, seconds: float) -> tuple[int, float]:
    """(requests completed, seconds taken) by `concurrency` keep-alive clients for `seconds`."""
    done = [0]
    deadline = time.perf_counter() + seconds

    def worker():
        client = Client(target)
        while time.perf_counter() < deadline:
            client.post(target.path, REQUEST)
            done[0] += 1
        client.close()
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)])
    return done[0], time.perf_counter() - started


def timed_requests(target, n: int) -> list[float]:
    client = Client(target)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        client.post(target.path, REQUEST)
        times.append((time.perf_counter() - started) * 1000)
    client.close()
    return times


def pct(sorted_values: list, p: float) -> float:
    """Nearest-rank percentile, rounded to microseconds."""
    index = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values)) - 1))
    return round(sorted_values[index], 3)


# ---------------------------------------------------------------- the processes


class Target:
    def __init__(self, port: int, path: str):
        self.port, self.path = port, path


class Stack:
    """The upstream and BitRouter processes, torn down on exit; `extra` is merged into bitrouter.yaml."""

    def __init__(self, extra: dict | None = None, workers: int = 1):
        self.extra, self.workers = extra or {}, workers

    def __enter__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="bitrouter-bench-")
        home = self.home = Path(self.tmp.name)
        up_port, br_port = free_port(), free_port()
        self.upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(up_port)])
        (home / "bitrouter.yaml").write_text(json.dumps({
            "server": {"listen": f"127.0.0.1:{br_port}", "workers": self.workers},
            "providers": {"fast": {"derives": "openai", "api_base": f"http://127.0.0.1:{up_port}/v1",
                                   "api_key": "bench"}},
            "models": {"bench": {"endpoints": [{"provider": "fast", "model_id": "m"}]}}, **self.extra}))
        exe = Path(sys.executable).with_name("bitrouter")
        self.proxy_proc = subprocess.Popen([str(exe), "--home-dir", str(home), "serve"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.direct = Target(up_port, "/v1/chat/completions")
        self.proxy = Target(br_port, "/v1/chat/completions")
        wait_for_port(up_port)
        wait_for_port(br_port)
        if self.workers > 1:  # the port answers once the first worker listens; wait for them all
            deadline = time.monotonic() + 20
            while len(list((home / "run" / "workers").glob("*.json"))) < self.workers:
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers did not all start")
                gevent.sleep(0.05)
        return self

    def stop_proxy(self) -> None:
        """Stop BitRouter cleanly (it drains and writes every spend row)."""
        self.proxy_proc.terminate()
        self.proxy_proc.wait(30)

    def __exit__(self, *exc):
        for proc in (self.proxy_proc, self.upstream):
            proc.terminate()
            proc.wait(30)
        self.tmp.cleanup()


def serve_upstream(port: int) -> None:
    """A minimal HTTP/1.1 keep-alive upstream: canned chat completion or SSE stream."""
    plain = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
             + str(len(CHAT_BODY)).encode() + b"\r\n\r\n" + CHAT_BODY)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in STREAM_FRAMES) + b"0\r\n\r\n"
    streamed = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + chunks

    def handle(sock, _addr):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        while True:
            head, body = read_message(sock, buffer)
            if head is None:
                return
            buffer = body[1]
            sock.sendall(streamed if b'"stream": true' in body[0] or b'"stream":true' in body[0] else plain)
    StreamServer(("127.0.0.1", port), handle, backlog=1024).serve_forever()


# ---------------------------------------------------------------- a tiny HTTP client


class Client:
    """One keep-alive connection speaking just enough HTTP/1.1 for the benchmark."""

    def __init__(self, target, token: str | None = None):
        self.sock = socket.create_connection(("127.0.0.1", target.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.auth = b"authorization: Bearer %s\r\n" % token.encode() if token else b""

    def post(self, path: str, body: dict) -> bytes:
        data = json.dumps(body).encode()
        self.sock.sendall(b"POST %s HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                          b"%scontent-length: %d\r\n\r\n%s" % (path.encode(), self.auth, len(data), data))
        head, (payload, self.buffer) = read_message(self.sock, self.buffer)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"benchmark request failed: {head[:80]!r} {payload[:200]!r}")
        return payload

    def ttfb_many(self, path: str, body: dict, n: int) -> list[float]:
        times = []
        for _ in range(n):
            data = json.dumps(body).encode()
            started = time.perf_counter()
            self.sock.sendall(b"POST %s HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                              b"content-length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
            first = self.sock.recv(65536)
            times.append((time.perf_counter() - started) * 1000)
            _, (_, self.buffer) = read_message(self.sock, first)
        return times

    def close(self):
        self.sock.close()


def read_message(sock, buffer: bytes):
    """Read one HTTP message (content-length or chunked); returns (head, (body, leftover))."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            return None, (b"", b"")
        buffer += data
    head, buffer = buffer.split(b"\r\n\r\n", 1)
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            while b"\r\n" not in buffer:
                buffer += sock.recv(65536)
            size_line, rest = buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            body, buffer = body + rest[:size], rest[size + 2:]
            if size == 0:
                return head, (body, buffer)
    length = 0
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(buffer) < length:
        buffer += sock.recv(65536)
    return head, (buffer[:length], buffer[length:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            gevent.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


if __name__ == "__main__":
    main()
