"""Running BitRouter in the background: start, stop, restart, reload and status.

The server process owns `<run>/bitrouter.pid`: it locks the file (flock) for its whole
life, writes its pid at once and its URL and start time once listening, and removes the
file on exit. A pid file whose lock nobody holds is stale, whatever process now has that
pid, so the CLI cleans it and never signals it. The same module sets up the server's log
file: size-rotated, one line per request plus lifecycle events, secrets scrubbed.
"""

import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler

from bitrouter import Error, boundary, client, config, guardrails, hints
from bitrouter.home import mask_url, private_file, private_folder

log = logging.getLogger("bitrouter")

START_TIMEOUT = 20.0  # seconds `start` waits for GET /health
STOP_GRACE = 10.0  # seconds `stop` waits beyond the server's drain_timeout before SIGKILL
RELOAD_TIMEOUT = 30.0
NEAR_CAPACITY = 0.8  # `status` warns when this share of the server's connection capacity is open
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
WORKER_FORMAT = "%(levelname)s %(message)s"  # a `--workers` supervisor adds the time as it logs the line
FLUSH_DELAY = 0.2  # seconds a request line may wait in the log's buffer


@dataclass
class Daemon:
    """A live server of this home, as its pid file describes it (the rest once it listens)."""

    pid: int | None
    url: str | None = None
    started: float | None = None
    mode: str = ""  # foreground | dashboard | daemon


def start(home, timeout: float | None = None, verb: str = "started") -> Daemon:
    """Spawn `bitrouter serve` detached and wait until it answers GET /health."""
    config.load(home)  # a broken config fails here, before anything is spawned
    timeout = START_TIMEOUT if timeout is None else float(timeout)
    current = running(home)
    if current:
        raise Error(f"daemon is already running{_who(current)}")
    private_folder(home.run_dir)
    with open(private_file(home.log_file), "ab") as out:
        offset = out.tell()
        command = [sys.executable, "-m", "bitrouter", *home.cli_args(), "serve"]
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise Error(f"the server exited during startup (exit code {child.returncode})"
                        + _log_tail(home, offset))
        ready = _read(home.pid_file)
        if ready and ready.pid == child.pid and ready.url and client.health(ready.url)[0]:
            print(f"bitrouter daemon {verb} (pid {ready.pid}) on {ready.url}", flush=True)
            return ready
        time.sleep(0.05)
    _terminate(child)
    raise Error(f"the server did not answer GET /health within {timeout:g}s, so it was stopped "
                f"(raise the limit with --timeout)" + _log_tail(home, offset))


def stop(home, timeout: float | None = None) -> None:
    """SIGTERM the server, wait for its drain (bounded), SIGKILL as the last resort."""
    current = _require(home)
    if timeout is None:
        timeout = _drain_timeout(home) + STOP_GRACE
    clock = time.monotonic()
    busy = _busy(home, current.url)
    _signal(home, current, signal.SIGTERM)
    if busy:
        print(f"stopping the server (pid {current.pid}): waiting for {busy} running request(s) "
              f"to finish, up to {timeout:g}s", flush=True)
    if not _wait_gone(home, current.pid, float(timeout)):
        print(f"warning: the server (pid {current.pid}) did not stop within {timeout:g}s; killing it",
              file=sys.stderr)
        _signal(home, current, signal.SIGKILL)
        if not _wait_gone(home, current.pid, 5.0):
            raise Error(f"pid {current.pid} survived SIGKILL")
    print(f"bitrouter daemon stopped (pid {current.pid}, {time.monotonic() - clock:.2f}s)", flush=True)


def restart(home, timeout: float | None = None) -> None:
    """Stop the server if it runs (config checked first), then start it again."""
    config.load(home)  # never stop a working server for a config that cannot start
    if running(home):
        stop(home, timeout)
    start(home, timeout, verb="restarted")


def reload(home, timeout: float = RELOAD_TIMEOUT) -> None:
    """Ask the running server to reload its configuration and report its answer."""
    current = _require(home)
    try:
        with client.Client(current.url, home) as admin:
            reply = admin.post("/admin/reload", timeout=timeout)
    except client.Unreachable as exc:
        _hangup(home, current, f"the server did not answer over HTTP ({exc})")
        return
    if reply.status in (401, 403):  # no account the server trusts; as the process owner we may signal it
        _hangup(home, current, f"POST /admin/reload was refused ({reply.message})")
        return
    _check(reply)
    print("configuration reloaded", flush=True)
    for note in reply.body.get("notes") or []:
        print(f"note: {note}", flush=True)


def running(home) -> Daemon | None:
    """The live server of this home, or None (a stale pid file is removed on the way)."""
    if not _locked(home.pid_file):
        return None
    return _read(home.pid_file) or Daemon(pid=None)  # locked but not written yet: starting


def warn_open_server(home) -> None:
    """The first account makes an open server (auth.mode auto) require tokens: say so."""
    current = running(home)
    if current is None or current.url is None:
        return
    try:
        cfg = config.load(home)
    except config.ConfigError:
        return
    if cfg.auth["mode"] == "auto" and not cfg.auth["trusted_issuers"]:
        print(f"warning: the server running on {current.url} (pid {current.pid}) served without a token "
              "until now; from its next request on it refuses every client that sends no token of "
              "this account", file=sys.stderr)


def status_command(home, as_json: bool = False) -> bool:
    """`bitrouter status`: print the report (text or JSON); False when it found a problem."""
    report = status_report(home)
    print(json.dumps(report, indent=2) if as_json else status_text(report))
    return not report["problems"]


def status_report(home) -> dict:
    """Daemon state, paths, auth, providers and problems, as JSON-ready data (keys masked)."""
    from bitrouter import accounts
    current = running(home)
    report = {"daemon": _daemon_state(current),
              "paths": {"home": str(home.root), "config": str(home.config_file), "env": str(home.env_file),
                        "runtime": str(home.run_dir), "logs": str(home.logs_dir)},
              "problems": []}
    if report["daemon"]["state"] == "running" and report["daemon"]["health"] != "ok":
        report["problems"].append(f"the server does not answer GET /health: {report['daemon']['health']}")
    if current and current.url:
        report["server"], problems = _server_state(home, current.url)
        report["problems"] += problems
    try:
        cfg = config.load(home)
    except config.ConfigError as exc:  # the daemon state is still worth showing
        report["problems"].insert(0, str(exc))
        return report
    env = config.load_env(home.env_file)
    account = _active_account(home)
    trusted = len(accounts.trusted_issuers(home)) + len(cfg.auth["trusted_issuers"])
    host = cfg.host_port[0]
    required = cfg.auth["mode"] == "on" or (cfg.auth["mode"] == "auto" and (trusted or not config.is_loopback(host)))
    report.update(
        database=mask_url(cfg.database_url), listen=cfg.listen,
        auth={"mode": cfg.auth["mode"], "tokens_required": bool(required), "active_account": account,
              "trusted_issuers": trusted},
        providers=[{"name": name, "protocol": p.api_protocol, "api_base": p.api_base,
                    "key": boundary.mask(p.api_key), "key_from": _key_source(p, env)}
                   for name, p in sorted(cfg.providers.items())
                   if p.configured and p.needs_key],
        models=sorted(cfg.models), unset=[f"${{{v}}}" for v in cfg.unset_vars])
    for var in cfg.unset_vars:
        report["problems"].append(f"${{{var}}} is used in {home.config_file} but is not set "
                                  f"(add it to {home.env_file})")
    for alias in cfg.models.values():
        keyless = sorted({e.provider for e in alias.endpoints
                          if not (e.api_key or cfg.providers[e.provider].configured)})
        if len(keyless) == len({e.provider for e in alias.endpoints}):
            prefixes = ", ".join(f"{cfg.providers[n].env_prefix}_API_KEY" for n in keyless)
            report["problems"].append(f"alias {alias.name!r} cannot be served: no key for "
                                      f"{', '.join(keyless)} (set {prefixes})")
    return report


def status_text(report: dict) -> str:
    """The report as two aligned columns, one provider per line, problems last."""
    d = report["daemon"]
    lines = [("daemon", _daemon_words(d))]
    if d["state"] == "running":
        lines += [("mode", d["mode"]), ("url", d["url"]), ("uptime", d["uptime"]), ("health", d["health"])]
        lines += list(report.get("server", {}).items())
    lines += list(report["paths"].items())
    if "listen" in report:
        auth = report["auth"]
        if auth["tokens_required"]:
            state = f"tokens required (auth.mode {auth['mode']}, {auth['trusted_issuers']} trusted issuer(s))"
        else:
            state = (f"open: no token needed (auth.mode {auth['mode']}"
                     + ("" if auth["mode"] == "open" else "; `" + hints.command("account", "-g")
                        + "` makes tokens required") + ")")
        lines += [("database", report["database"]), ("listen", report["listen"]), ("auth", state),
                  ("providers", ", ".join(p["name"] for p in report["providers"]) or "(none configured)")]
        width = max((len(p["name"]) for p in report["providers"]), default=0)
        for p in report["providers"]:
            lines.append(("", f"{p['name']:<{width}}  {p['protocol']:<9}  {p['api_base']}  key {p['key']} "
                              f"({p['key_from']})"))
        if report["models"]:
            lines.append(("models", ", ".join(report["models"])))
        if report["unset"]:
            lines.append(("unset", ", ".join(report["unset"])))
    for problem in report["problems"]:
        lines.append(("problem", problem))
    return _columns(lines)


def logs(home, follow: bool = False, lines=40) -> None:
    """`bitrouter logs`: the last lines of the server log, then (with follow) new ones as written."""
    if isinstance(lines, bool) or not str(lines).isdigit():
        raise Error(f"--lines must be a whole number, got {lines!r}")
    path = home.log_file
    if not path.exists() and not follow:
        raise Error(f"no server log yet at {path}; `{hints.command('start')}` or "
                    f"`{hints.command('serve')}` writes one")
    position = 0
    if path.exists():
        with open(path, "rb") as f:
            tail = f.read().decode("utf-8", "replace").splitlines()
            position = f.tell()
        for line in tail[-int(lines):] if int(lines) else []:
            print(line, flush=True)
    while follow:
        position = _follow(path, position)
        time.sleep(0.2)


def route_command(home, action: str, name, endpoints, strategy: str = "priority") -> None:
    """`bitrouter route list|add|rm`: the running server's dynamic routes, through /admin/routes."""
    current = _require(home)
    with client.Client(current.url, home) as admin:
        _route(admin, action, name, endpoints, strategy)


def _route(admin, action: str, name, endpoints, strategy: str) -> None:
    """One `route` action against the server's /admin/routes."""
    if action == "list":
        routes = _check(admin.get("/admin/routes")).get("routes", [])
        width = max((len(r["model"]) for r in routes), default=0)
        for r in routes:
            chain = " > ".join(f"{e['provider']}:{e['model_id']}" for e in r["endpoints"])
            print(f"{r['model']:<{width}}  {r['source']:<7}  {r['strategy']:<12}  {chain}")
        if not routes:
            print("no routes: add one with `" + hints.command("route", "add", "NAME", "PROVIDER:MODEL") + "`")
    elif action == "add":
        if not name or not endpoints:
            raise Error("route add needs a name and at least one endpoint: "
                        + hints.command("route", "add", "NAME", "PROVIDER:MODEL", "[PROVIDER:MODEL...]"))
        spec = {"model": str(name), "strategy": str(strategy), "endpoints": [str(e) for e in endpoints]}
        body = _check(admin.post("/admin/routes", spec))
        chain = " > ".join(f"{e['provider']}:{e['model_id']}" for e in body["route"]["endpoints"])
        print(f"route {name} -> {chain} ({strategy}); stored in the database, so it survives restarts")
    elif action == "rm":
        if not name:
            raise Error("route rm needs the route's name: " + hints.command("route", "rm", "NAME"))
        from urllib.parse import quote
        _check(admin.delete(f"/admin/routes/{quote(str(name), safe='')}"))
        print(f"route {name} removed")
    else:
        raise Error(f"unknown route action {action!r}: use list, add or rm")


# ---------------------------------------------------------------- server side


class PidFile:
    """The server's claim on its run dir: a locked pid file, removed when released."""

    def __init__(self, path, fd: int):
        self.path = path
        self.fd = fd

    def publish(self, url: str, mode: str) -> None:
        """Record that the server is listening: pid, connectable URL, start time and mode."""
        data = f"{os.getpid()}\n{url}\n{time.time():.3f}\n{mode}\n".encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))

    def release(self) -> None:
        """Remove the file (if it is still ours) and drop the lock."""
        try:
            if _inode(self.path) == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        finally:
            os.close(self.fd)


@contextmanager
def pid_file(home):
    """Claim `<run>/bitrouter.pid` for this process; Error if another server holds it."""
    path = home.pid_file
    private_folder(home.run_dir)
    deadline = time.monotonic() + 1.0
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                other = _read(path)
                who = f" (pid {other.pid})" if other else ""
                raise Error(f"another BitRouter server{who} is already running with run dir {home.run_dir}") from None
            time.sleep(0.05)  # a CLI probe holds the lock for an instant; a server holds it for good
            continue
        if _inode(path) != os.fstat(fd).st_ino:  # its previous owner removed it meanwhile
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        break
    claim = PidFile(path, fd)
    try:
        yield claim
    finally:
        claim.release()


def detached(home) -> bool:
    """Whether this process's stderr is the server log, as `bitrouter start` spawns it."""
    try:
        return _same_stat(os.fstat(2), os.stat(home.log_file))
    except OSError:
        return False


@contextmanager
def server_log(home, srv, echo: bool = True, requests: "RequestLog | None" = None):
    """While serving, log to <logs>/bitrouter.log, and to stderr too when echo (the foreground).

    With `requests`, its request lines go to the same places, in order with the other lines.
    """
    fmt = LOG_FORMAT
    if srv.mode == "worker":  # its supervisor writes the lines (with their time) into the log file
        handlers, fmt = [logging.StreamHandler(sys.stderr)], WORKER_FORMAT
    else:
        private_file(home.log_file)
        follows_stdio = detached(home)
        handlers = [_RotatingLog(home.log_file, srv, follows_stdio)]
        if echo and not follows_stdio:
            handlers.append(logging.StreamHandler(sys.stderr))
    logger = logging.getLogger("bitrouter")
    previous = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in handlers:
        handler.setFormatter(logging.Formatter(fmt))
        if requests is not None:  # a line logged now follows the request lines still buffered
            handler.addFilter(requests.flush_filter)
        handler.addFilter(_Redact(srv))
        logger.addHandler(handler)
    if requests is not None:
        requests.open(handlers, timed=fmt == LOG_FORMAT)
    try:
        yield
    finally:
        if requests is not None:
            requests.close()  # every request line is written before the handlers close
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.level, logger.propagate = previous


class RequestLog:
    """One log line per finished request (a Metrics listener), without `logging`'s per-record work.

    Each line is formatted and redacted once and buffered; the buffer goes to the log's
    handlers within FLUSH_DELAY (one write and flush each), before any other log line, and
    when the log closes. Until server_log() opens it, lines are dropped (as an unconfigured
    logger drops INFO lines).
    """

    def __init__(self, srv):
        self.srv = srv
        self.flush_filter = _FlushFirst(self)
        self._handlers = []
        self._timed = True
        self._lines = []
        self._timer = None
        self._second = None  # the last second a time stamp was made for, and that stamp
        self._stamp = ""
        self._runtime = None
        self._secrets = []

    def open(self, handlers, timed: bool) -> None:
        """Write to these logging handlers from now on (timed: each line starts with its time)."""
        self._handlers, self._timed = list(handlers), timed

    def write(self, record) -> None:
        """Buffer the log line of a finished request."""
        if not self._handlers:
            return
        line = (f"request {record.protocol} model={_field(record.model)} upstream={_field(record.upstream or '-')} "
                f"status={record.status} latency={record.latency_ms:.0f}ms "
                f"tokens={record.usage.input}/{record.usage.output} stream={'yes' if record.stream else 'no'} "
                f"attempts={record.attempts}")
        if record.cost_micro_usd:  # the request's own cost: the spend log sums a second's alike requests
            line += f" cost=${record.cost_micro_usd / 1e6:.6f}"
        if record.account:
            line += f" account={_field(record.account)}"
        if record.error:
            line += f" error={json.dumps(record.error[:300])}"
        rt = self.srv.runtime
        if rt is not self._runtime:  # recomputed once per reload, not per line
            self._runtime, self._secrets = rt, rt.secrets
        line = _scrub(line, self._secrets)
        if self._timed:
            now = time.time()
            second = int(now)
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            line = f"{self._stamp},{int((now - second) * 1000):03d} INFO {line}\n"
        else:
            line = f"INFO {line}\n"
        self._lines.append(line)
        if self._timer is None:
            self._timer = threading.Timer(FLUSH_DELAY, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        """Write the buffered lines to every handler now."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        lines, self._lines = self._lines, []
        if not lines:
            return
        text = "".join(lines)
        for handler in self._handlers:
            with handler.lock:
                if isinstance(handler, _RotatingLog):
                    handler.write_lines(text, lines)
                else:
                    handler.stream.write(text)
                handler.flush()

    def close(self) -> None:
        """Write what is buffered and stop writing."""
        self.flush()
        self._handlers = []


class _FlushFirst(logging.Filter):
    """Writes a RequestLog's buffered lines before a handler emits any other line (keeps order)."""

    def __init__(self, requests: RequestLog):
        super().__init__()
        self.requests = requests

    def filter(self, record) -> bool:
        if self.requests._lines:
            self.requests.flush()
        return True


def connect_url(host: str, port: int) -> str:
    """The URL a local client uses to reach a listener (loopback for the wildcard addresses)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _RotatingLog(RotatingFileHandler):
    """Size-rotated log whose limits follow reloads; a daemon's stdout/stderr follow it too.

    The size check counts what was written instead of calling stat per line; each flush
    re-reads the size, since stray output to a daemon's stdout/stderr lands in the file too.
    Request lines come in batches through write_text (RequestLog).
    """

    def __init__(self, path, srv, follows_stdio: bool):
        self.srv = srv
        self.follows_stdio = follows_stdio
        self._size = 0  # bytes in the file
        super().__init__(path, encoding="utf-8")
        self._limits()

    def _open(self):
        """The log file, created 0600 (request metadata is nobody else's business)."""
        private_file(self.baseFilename)
        stream = super()._open()
        self._regular = os.path.isfile(self.baseFilename)  # /dev/null and the like never rotate
        self._size = os.fstat(stream.fileno()).st_size
        return stream

    def write_lines(self, text: str, lines: list) -> None:
        """Write ready lines, text being their join (the caller holds the lock, then flushes).

        In one write when they fit in the file; else one by one, rotating where the next would not.
        """
        if not self._rollover_needed(_size(text)):
            self.stream.write(text)
            return
        for line in lines:
            if self._rollover_needed(_size(line)):
                self.doRollover()
            self.stream.write(line)
            self._size += _size(line)

    def flush(self) -> None:
        """Flush (after every line logged the usual way, and every batch of request lines)."""
        super().flush()
        if self.stream is not None:
            self._size = os.fstat(self.stream.fileno()).st_size

    def shouldRollover(self, record) -> bool:
        return self._rollover_needed(_size(self.format(record)) + 1)

    def doRollover(self) -> None:
        super().doRollover()
        if self.follows_stdio:  # stray output (tracebacks, prints) keeps going to the live file
            for fd in (1, 2):
                os.dup2(self.stream.fileno(), fd)

    def _rollover_needed(self, size: int) -> bool:
        """Whether size more bytes would take the file past its limit (counted, not asked for)."""
        self._limits()
        if self.stream is None:
            self.stream = self._open()
        if not self.maxBytes or not self._regular:
            return False
        return self._size + size >= self.maxBytes

    def _limits(self) -> None:
        limits = self.srv.runtime.cfg.logging
        self.backupCount = int(limits["backups"])
        # With no backups there is nothing to rotate into: the file simply grows.
        self.maxBytes = int(limits["max_bytes"]) if self.backupCount else 0


# Credentials that are not in the configuration: bearer headers, JWTs, common key shapes.
_SECRET = re.compile(r"(?i)\bbearer\s+[\w.~+/=-]+|\bsk-[\w-]{8,}|\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"
                     r"|\bAIza[\w-]{20,}")
_PLAIN_FIELD = re.compile(r"[\w.:/@+-]+")  # a log field value that needs no quoting
_SECRET_LEADS = ("bearer", "sk-", "eyj", "aiza")  # how each _SECRET alternative starts, folded


def _size(text: str) -> int:
    """Bytes of text in the log's UTF-8."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _scrub(message: str, keys) -> str:
    """A log line with the configured keys masked and other credential shapes redacted."""
    message = boundary.redact(message, keys)
    if message.isascii():  # every _SECRET match starts with one of its leads: most lines need no regex
        folded = message.lower()
        if not any(map(folded.__contains__, _SECRET_LEADS)):
            return message
    return _SECRET.sub(guardrails.REDACTED, message)


class _Redact(logging.Filter):
    """Scrubs API keys and tokens from log lines: the configured keys plus common key shapes."""

    def __init__(self, srv):
        super().__init__()
        self.srv = srv
        self._runtime = None
        self._keys = []

    def filter(self, record) -> bool:
        rt = self.srv.runtime
        if rt is not self._runtime:  # recomputed once per reload, not per line
            self._runtime, self._keys = rt, rt.secrets
        message = record.getMessage()
        clean = _scrub(message, self._keys)
        if clean != message:
            record.msg, record.args = clean, None
        return True


# ---------------------------------------------------------------- client side helpers


def _require(home) -> Daemon:
    current = running(home)
    if current is None:
        raise Error("daemon is not running")
    if current.pid is None or current.url is None:
        raise Error("the server is still starting; try again in a moment")
    return current


def _signal(home, current: Daemon, sig) -> None:
    """Send sig after checking the pid really is a BitRouter process."""
    if not _is_bitrouter(current.pid):
        raise Error(f"{home.pid_file} names pid {current.pid}, which is not a BitRouter server; "
                    "not signalling it")
    try:
        os.kill(current.pid, sig)
    except ProcessLookupError:
        pass  # it exited on its own meanwhile
    except PermissionError:
        raise Error(f"not permitted to signal pid {current.pid} (is the server running as another user?)") from None


def _hangup(home, current: Daemon, why: str) -> None:
    if current.mode == "dashboard":  # there SIGHUP means "your terminal closed": it would quit
        raise Error(f"{why}; the dashboard (pid {current.pid}) is not signalled, as SIGHUP would end it")
    _signal(home, current, signal.SIGHUP)
    print(f"{why}; sent SIGHUP instead. The outcome is logged in {home.log_file}", flush=True)


def _wait_gone(home, pid: int, timeout: float) -> bool:
    """Wait until the server released its pid file lock and its process has exited."""
    deadline = time.monotonic() + timeout
    while _locked(home.pid_file) or not _exited(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _exited(pid: int) -> bool:
    """Whether pid is gone or a zombie (EPERM means it lives, under another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:  # gone meanwhile; without /proc, kill() has said it lives
        return os.path.isdir("/proc/self")


def _locked(path) -> bool:
    """Whether a live server holds the pid file's lock; a stale file is removed under the lock."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        if _inode(path) == os.fstat(fd).st_ino:
            with suppress(OSError):  # another user's run dir: stale all the same
                os.unlink(path)
        return False
    finally:
        os.close(fd)


def _read(path) -> Daemon | None:
    """Parse the pid file: `pid` alone while starting; pid, url, started, mode once listening."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    lines = text.split("\n")
    if not lines[0].strip().isdigit():
        return None
    if len(lines) < 5 or not text.endswith("\n"):  # not (completely) published yet
        return Daemon(pid=int(lines[0]))
    try:
        return Daemon(pid=int(lines[0]), url=lines[1], started=float(lines[2]), mode=lines[3])
    except ValueError:
        return Daemon(pid=int(lines[0]))


def _is_bitrouter(pid: int) -> bool:
    """Whether pid runs BitRouter, by its command line where /proc shows it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")  # no /proc on this system: the held lock is the proof
    except PermissionError:
        return True  # hidden by hidepid: the held lock is the proof
    return any(os.path.basename(arg).startswith(b"bitrouter") for arg in argv)


def _terminate(child) -> None:
    child.terminate()
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _drain_timeout(home) -> float:
    try:
        return float(config.load(home).server["drain_timeout"])
    except config.ConfigError:  # the file may have been broken since the server started
        return config.SERVER_DEFAULTS["drain_timeout"]


def _log_tail(home, offset: int, count: int = 15) -> str:
    """The last lines the child wrote to the log, indented for an error message."""
    try:
        with open(home.log_file, "rb") as f:
            f.seek(offset)
            lines = f.read().decode("utf-8", "replace").splitlines()[-count:]
    except OSError:
        return ""
    if not lines:
        return f" (nothing was written to {home.log_file})"
    return f"; last lines of {home.log_file}:\n" + "\n".join("    " + line for line in lines)


def _daemon_state(current: Daemon | None) -> dict:
    if current is None:
        return {"state": "stopped"}
    if current.url is None:
        return {"state": "starting", "pid": current.pid}
    return {"state": "running", "pid": current.pid, "mode": current.mode, "url": current.url,
            "uptime": _duration(time.time() - current.started), "health": client.health(current.url)[1]}


def _daemon_words(d: dict) -> str:
    if d["state"] == "starting":
        return f"starting (pid {d['pid']})" if d.get("pid") else "starting"
    return f"running (pid {d['pid']})" if d["state"] == "running" else d["state"]


def _server_state(home, url: str) -> tuple[dict, list]:
    """From /admin/metrics: workers and request totals, and the problems the server sees
    (providers failing, say with a rejected key; connections near the open-file limit)."""
    try:
        with client.Client(url, home) as admin:
            reply = admin.get("/admin/metrics", 2.0)
    except client.Unreachable:
        return {}, []
    if reply.status != 200:
        return {}, [f"provider health unavailable: HTTP {reply.status}"]
    body, state = reply.body, {}
    if body.get("workers"):  # `serve --workers N`: the totals are over every worker
        state["workers"] = ", ".join(f"{w['index']}: pid {w['pid']}, {w['requests']} requests" for w in body["workers"])
    totals = (body.get("totals") or {}).get("since_start")
    if totals:
        state["requests"] = f"{totals['requests']} since start ({totals['errors']} failed)"
    problems = [f"{p['name']} {p['state']}: {p['last_error'] or 'no detail'}"
                for p in body.get("providers", []) if p.get("state") not in ("ok", "no key")]
    conns = body.get("connections") or {}
    if conns.get("capacity") and conns["open"] >= NEAR_CAPACITY * conns["capacity"]:
        problems.append(f"connections: {conns['open']} open of {conns['capacity']} (near the open-file limit; "
                        "the longest idle ones are closed to make room)")
    return state, problems


def _busy(home, url: str) -> int:
    """How many requests the server is answering (0 when it cannot say)."""
    try:
        with client.Client(url, home) as admin:
            reply = admin.get("/admin/metrics?recent=0", 1.0)
    except client.Unreachable:
        return 0
    return len(reply.body.get("running") or []) if reply.status == 200 else 0


def _active_account(home) -> str | None:
    from bitrouter import accounts
    try:
        account = accounts.active(home)
    except Error:
        return None
    return account.prefix if account else None


def _key_source(provider, env: dict) -> str:
    """Where a provider's key came from: its environment variable, or the config file."""
    var = f"{provider.env_prefix}_API_KEY"
    return f"${var}" if provider.env_prefix and env.get(var) == provider.api_key else "bitrouter.yaml"


def _follow(path, position: int) -> int:
    """Print what was appended to path since position; start over when it was rotated."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size < position:  # rotated: the live file is a new one
        position = 0
    if size > position:
        with open(path, "rb") as f:
            f.seek(position)
            data = f.read()
        complete = data.rfind(b"\n") + 1
        if complete:
            sys.stdout.write(data[:complete].decode("utf-8", "replace"))
            sys.stdout.flush()
        position += complete
    return position


def _check(reply) -> dict:
    """A 200 reply's body; an Error with the server's message otherwise."""
    if reply.status != 200:
        raise Error(reply.message)
    return reply.body


def _duration(seconds: float) -> str:
    """3d 4h 5m, 2h 3m 4s, 5m 6s or 7s."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m")] + ([] if days else [(secs, "s")])
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return " ".join(shown) or "0s"


def _columns(lines: list) -> str:
    return "\n".join(f"{label + ':' if label else '':<11}{value}" for label, value in lines)


def _who(current: Daemon) -> str:
    pid = f" (pid {current.pid})" if current.pid else " (starting)"
    return pid + (f" on {current.url}" if current.url else "")


def _field(value: str) -> str:
    """A client-supplied value for a log line: quoted when it could break the line's format."""
    return value if _PLAIN_FIELD.fullmatch(value) else json.dumps(value)


def _inode(path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _same_stat(a, b) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
