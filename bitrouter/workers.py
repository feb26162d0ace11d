"""`serve --workers N`: N server processes on one port, supervised by one parent.

The parent claims the pid file, owns the log file and binds the port first (with
SO_REUSEPORT, never listening: it holds the port and finds it when it is 0). Each worker
is a full server (`bitrouter serve` with BITROUTER_WORKER=<index>:<port> in its
environment) that binds the same port with SO_REUSEPORT, so the kernel spreads new
connections over the workers. Workers log to a pipe the parent writes into the log.
The parent restarts a worker that dies, forwards SIGHUP (reload) to every worker, and on
SIGTERM/SIGINT stops them all, each draining its own requests. Every worker writes its
totals to `<run>/workers/<index>.json` each second, so `/admin/metrics` (and `status` and
the dashboard) can show totals over all workers whichever worker answers.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from types import SimpleNamespace

from bitrouter import Error, boundary, config, daemon
from bitrouter.home import write_private
from bitrouter.metrics import Metrics

log = logging.getLogger("bitrouter")

ENV = "BITROUTER_WORKER"
PUBLISH_SECONDS = 1.0  # how often a worker writes its totals for the others
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0)  # seconds before restarting a worker that keeps dying
STABLE_SECONDS = 10.0  # a worker that lived this long starts the backoff afresh when it dies


def role() -> tuple[int, int] | None:
    """(index, port) when this process is a worker of a supervisor, else None."""
    value = os.environ.get(ENV)
    if not value:
        return None
    index, _, port = value.partition(":")
    return int(index), int(port)


def supervise(home, cfg, count: int) -> None:
    """Run `count` workers on the configured listen address until SIGTERM/SIGINT."""
    import gevent
    import gevent.event

    host, port = cfg.host_port
    _bind(host, port, shared=False).close()  # SO_REUSEPORT would share the port with anyone: be alone first
    shim = SimpleNamespace(runtime=SimpleNamespace(cfg=cfg, secrets=boundary.secrets_of(cfg)), metrics=Metrics(),
                           mode="supervisor")  # what the log's redaction reads
    with daemon.pid_file(home) as claim, daemon.server_log(home, shim, echo=not daemon.detached(home)):
        holder = _bind(host, port)
        port = holder.getsockname()[1]
        folder = home.run_dir / "workers"
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.json"):
            stale.unlink()
        pool = _Pool(home, cfg, count, port, folder)
        stop = gevent.event.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(sig, stop.set)
        gevent.signal_handler(signal.SIGHUP, pool.reload)
        pool.start()
        try:
            if not pool.wait_ready(stop, daemon.START_TIMEOUT):
                if not stop.is_set():
                    raise Error("the workers did not start; the log says why")
                return  # stopped while starting
            url = daemon.connect_url(host, port)
            claim.publish(url, "daemon" if daemon.detached(home) else "foreground")
            log.info("supervisor started (pid %d) with %d workers on %s", os.getpid(), count, url)
            while not stop.wait(0.2):
                pool.check()
                shim.runtime.cfg = pool.cfg  # the log's limits and redaction follow reloads
        finally:
            pool.stop(float(cfg.server["drain_timeout"]) + daemon.STOP_GRACE)
            holder.close()
            log.info("supervisor stopped")


def listener(host: str, port: int) -> socket.socket:
    """A worker's listening socket on the shared port."""
    sock = _bind(host, port)
    sock.listen(1024)
    return sock


def publish(srv, index: int, stack) -> None:
    """Write this worker's totals every PUBLISH_SECONDS (and once now) until `stack` closes."""
    import gevent

    path = srv.home.run_dir / "workers" / f"{index}.json"

    def write():
        data = {"index": index, "pid": os.getpid(), "running": len(srv.metrics.running),
                "totals": srv.metrics.snapshot(0)["totals"], "time": time.time()}
        write_private(path, json.dumps(data))

    def loop():
        parent = os.getppid()
        while True:
            gevent.sleep(PUBLISH_SECONDS)
            if os.getppid() != parent:  # the supervisor died: nobody would stop us
                log.error("the supervisor (pid %d) is gone; stopping", parent)
                os.kill(os.getpid(), signal.SIGTERM)
            write()

    path.parent.mkdir(parents=True, exist_ok=True)
    write()
    worker = gevent.spawn(loop)
    stack.callback(worker.kill)
    stack.callback(lambda: path.unlink(missing_ok=True))


def combined(srv, data: dict) -> dict:
    """A worker's `/admin/metrics` body with totals and running counts over every worker."""
    mine = role()
    if mine is None:
        return data
    rows = [{"index": mine[0], "pid": os.getpid(), "running": len(data["running"]), "totals": data["totals"]}]
    for path in sorted((srv.home.run_dir / "workers").glob("*.json")):
        try:
            other = json.loads(path.read_text())
        except (OSError, ValueError):  # being replaced this instant, or gone
            continue
        if other["index"] != mine[0]:
            rows.append(other)
    totals = {}
    for period in ("since_start", "today"):
        totals[period] = {key: sum(r["totals"][period].get(key, 0) for r in rows)
                          for key in data["totals"][period] if key != "date"}
        if "date" in data["totals"][period]:
            totals[period]["date"] = data["totals"][period]["date"]
    workers = [{"index": r["index"], "pid": r["pid"], "running": r["running"],
                "requests": r["totals"]["since_start"]["requests"]} for r in sorted(rows, key=lambda r: r["index"])]
    return {**data, "totals": totals, "worker": mine[0], "workers": workers}


# ---------------------------------------------------------------- the parent's side


class _Pool:
    """The supervisor's workers: start, watch, restart, signal, stop."""

    def __init__(self, home, cfg, count: int, port: int, folder):
        self.home = home
        self.cfg = cfg
        self.count = count
        self.port = port
        self.folder = folder
        self.procs = [None] * count
        self.born = [0.0] * count
        self.deaths = [0] * count
        self.due = [0.0] * count  # when a dead worker may be restarted

    def start(self) -> None:
        for index in range(self.count):
            self._spawn(index)

    def wait_ready(self, stop, timeout: float) -> bool:
        """Wait until every worker has published its first totals (it listens by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop.is_set():
            if all(self._published(i) for i in range(self.count)):
                return True
            if any(p.poll() is not None for p in self.procs):
                return False
            stop.wait(0.05)
        return False

    def check(self) -> None:
        """Restart workers that exited (after a backoff when they keep dying)."""
        now = time.monotonic()
        for index, proc in enumerate(self.procs):
            if proc is None:
                if now >= self.due[index]:
                    self._spawn(index)
                continue
            code = proc.poll()
            if code is None:
                continue
            lived = now - self.born[index]
            self.deaths[index] = 0 if lived > STABLE_SECONDS else self.deaths[index] + 1
            deaths = self.deaths[index]
            wait = RESTART_BACKOFF[min(deaths, len(RESTART_BACKOFF)) - 1] if deaths else 0.0
            log.error("worker %d (pid %d) exited with code %s after %.1fs; restarting it%s", index,
                      proc.pid, code, lived, f" in {wait:g}s" if wait else "")
            (self.folder / f"{index}.json").unlink(missing_ok=True)
            self.procs[index], self.due[index] = None, now + wait

    def reload(self) -> None:
        """SIGHUP: check the configuration, then ask every worker to reload it."""
        try:
            self.cfg = config.load(self.home)
        except config.ConfigError as exc:
            log.error("configuration reload (SIGHUP) failed; the workers keep the previous one: %s", exc)
            return
        log.info("configuration reload (SIGHUP): forwarding to %d workers", self.count)
        self._signal_all(signal.SIGHUP)

    def stop(self, timeout: float) -> None:
        """SIGTERM every worker and wait for their drains; SIGKILL those still running at timeout."""
        live = [p for p in self.procs if p is not None and p.poll() is None]
        log.info("stopping %d workers", len(live))
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop within %gs; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()

    def _spawn(self, index: int) -> None:
        import gevent
        env = {**os.environ, ENV: f"{index}:{self.port}", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "bitrouter", *self.home.cli_args(), "serve"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env)
        self.procs[index], self.born[index] = proc, time.monotonic()
        gevent.spawn(_relay_log, index, proc)

    def _published(self, index: int) -> bool:
        try:
            return json.loads((self.folder / f"{index}.json").read_text())["pid"] == self.procs[index].pid
        except (OSError, ValueError, KeyError, AttributeError):
            return False

    def _signal_all(self, sig) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                with suppress(ProcessLookupError):
                    proc.send_signal(sig)


def _relay_log(index: int, proc) -> None:
    """Write a worker's log lines (`LEVEL message`) into the supervisor's log."""
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        level, _, message = line.partition(" ")
        number = logging.getLevelName(level)
        if isinstance(number, int) and message:
            log.log(number, "[worker %d] %s", index, message)
        elif line:  # stray output: a traceback, a print
            log.warning("[worker %d] %s", index, line)
    proc.stdout.close()


def _bind(host: str, port: int, shared: bool = True) -> socket.socket:
    """A socket bound to host:port, `shared` with SO_REUSEPORT (Error if the port is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Error(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
