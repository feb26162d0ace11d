"""The live dashboard: `bitrouter` runs it beside an in-process server, `bitrouter tui` attaches.

Data comes from one snapshot (the `/admin/metrics` JSON, or Server.dashboard() in
process) plus request events that only say "something changed": the screen re-reads the
snapshot at most a few times a second and otherwise sleeps. render() is a pure function
of the snapshot, the terminal size and the View, so every screen can be tested as text.
"""

import io
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from bitrouter import Error, hints

REFRESH_MIN = 0.25  # seconds between snapshots while events arrive: at most 4 redraws a second
REFRESH_IDLE = 2.0  # cooldowns end without events, so re-read now and then
KEY_POLL = 0.25  # how often the key reader looks for a resize
MESSAGE_SECONDS = 8.0  # how long the footer shows the result of an action
RECENT = 100  # requests fetched for the log (what scrolling can reach): 35 KB of JSON a snapshot
INBOX = 4096  # events and keys waiting for the loop, which empties it at least 4 times a second
LOG_FIXED = 8 + 1 + 9 + 1 + 1 + 6 + 1 + 7 + 1 + 11 + 1 + 8  # log columns but the route, with spaces
# style -> (attribute, colour); NO_COLOR drops the colours only
STYLES = {"header": ("reverse", ""), "title": ("bold", ""), "dim": ("dim", ""), "error": ("", "red"),
          "warn": ("", "yellow"), "running": ("", "cyan"), "good": ("", "green"), "": ("", "")}

HELP = [
    ("title", "Keys"),
    ("", "  q            quit (an in-process server first lets running requests finish)"),
    ("", "  r            reload the configuration file and show the result"),
    ("", "  p            pause / resume the request log"),
    ("", "  Up/Down k/j  scroll the request log; PgUp/PgDn a page; Home/End top/bottom"),
    ("", "  ?            show / hide this help"),
    ("title", "Panes"),
    ("", "  Providers  health (ok, failing, cooling down, no key), requests, p50 latency"),
    ("", "  Routes     aliases and dynamic routes (*) with strategy and endpoint chain"),
    ("", "  Requests   newest on top; running ones show ... and their time so far"),
    ("", "  Totals     requests, errors, tokens and spend since start and for today"),
]


@dataclass
class View:
    """Dashboard state that is not in the snapshot: the mode, what keys changed, the clock."""

    mode: str = "in-process"
    now: float = 0.0
    paused: list | None = None  # the log rows frozen by `p`
    scroll: int = 0
    help: bool = False
    message: str = ""
    message_style: str = ""
    message_until: float = 0.0
    error: str = ""  # the attached server cannot be reached
    quitting: bool = False  # set by a signal; the loop sees it within a second

    def say(self, text: str, style: str = "") -> None:
        """Show text in the footer for MESSAGE_SECONDS."""
        self.message, self.message_style = text, style
        self.message_until = time.time() + MESSAGE_SECONDS

    def rows(self, snap: dict) -> list[dict]:
        """The request log as shown: the rows frozen by `p`, else the snapshot's."""
        return self.paused if self.paused is not None else log_rows(snap)


def attach(home, url=None) -> None:
    """`bitrouter tui`: the dashboard of a server that is already running (this home's, or url)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise Error("bitrouter tui needs a terminal")
    url = (url or server_url(home)).rstrip("/")
    remote = Remote.find(home, url)
    if remote is None:
        raise Error(f"no BitRouter server answers at {url}; start one with `{hints.command('start')}` "
                    f"(or run `{hints.command()}` for the server and the dashboard together)")
    dashboard(remote)


def dashboard(source, note: str = "") -> None:
    """Run the dashboard until `q`, Ctrl-C or SIGTERM; the terminal is restored on every path."""
    term = _terminal()
    inbox = source.subscribe()
    view = View()
    if note:
        view.say(note)
    stop = threading.Event()
    keys = threading.Thread(target=_read_keys, args=(term, inbox, stop), name="tui-keys", daemon=True)
    # Outermost first: output captured until the terminal is back, signals, then the screen.
    with _captured_output(inbox), _signals_quit(view):
        try:
            with term.fullscreen(), term.cbreak(), term.hidden_cursor():
                keys.start()
                try:
                    _loop(term, source, inbox, view)
                finally:
                    stop.set()
                    keys.join(2 * KEY_POLL)
        finally:
            source.close(inbox)


def render(snap: dict, width: int, height: int, view: View) -> list[tuple[str, str]]:
    """The screen as (style, text) lines: exactly `height` of them, none wider than `width`."""
    header = ("header", _fit(_header(snap, width, view), width))
    if width < 40 or height < 12:
        lines = [header, ("warn", _fit("enlarge the terminal to at least 80x24", width))]
        return (lines + [("", "")] * height)[:height]
    totals = _totals(snap, width)
    rows = _pane_rows(snap, height)
    lines = [header] + _panes(snap, width, rows)
    log_height = height - len(lines) - len(totals) - 1
    lines += _help(width, log_height) if view.help else _log(snap, width, log_height, view)
    lines += totals + [_footer(snap, width, log_height, view)]
    return [(style, text.rstrip()) for style, text in lines]


def log_rows(snap: dict) -> list[dict]:
    """Running and finished requests in one list, newest first."""
    return sorted(snap.get("running", []) + snap.get("recent", []), key=lambda r: -r["id"])


def server_url(home) -> str:
    """Where this home's server answers: its pid file's URL, else the configured address."""
    from bitrouter import config, daemon
    current = daemon.running(home)
    if current and current.url:
        return current.url
    return daemon.connect_url(*config.load(home).host_port)


# ---------------------------------------------------------------- data sources


class Local:
    """The server running in this process: snapshots are function calls, events in memory."""

    def __init__(self, srv):
        self.srv = srv

    def snapshot(self) -> dict:
        return self.srv.dashboard(RECENT)

    def label(self, snap: dict) -> str:
        return "in-process"

    def subscribe(self):
        return self.srv.metrics.subscribe(INBOX, brief=True)  # an event only says the snapshot is stale

    def reload(self) -> tuple[str, str]:
        try:
            notes = self.srv.reload("dashboard")
        except Error as exc:  # the cause first: the footer is one line and may cut the rest
            return f"reload failed: {_cause(exc)}; the previous configuration keeps serving", "error"
        summary = f"configuration reloaded: {len(self.srv.runtime.router.listing())} route(s)"
        return "; ".join([summary, *notes]), "warn" if notes else "good"

    def close(self, inbox) -> None:
        self.srv.metrics.unsubscribe(inbox)


class Remote:
    """A server in another process, over GET /admin/metrics and GET /admin/events."""

    def __init__(self, home, url: str):
        from bitrouter import client
        self.url = url
        self.admin = client.Client(url, home)
        self._stop = threading.Event()

    @classmethod
    def find(cls, home, url: str):
        """The server at url if it is a BitRouter; None when nothing (or something else) answers."""
        from bitrouter import client
        remote = cls(home, url)
        try:
            reply = remote._get_metrics()
        except client.Unreachable:
            reply = None
        if reply is not None and reply.status in (401, 403):
            raise Error(f"the server at {url} refused the dashboard (HTTP {reply.status}): {reply.message}")
        if reply is None or reply.status != 200 or "providers" not in reply.body:
            remote.admin.close()
            return None
        return remote

    def snapshot(self) -> dict:
        reply = self._get_metrics()
        if reply.status != 200:
            raise Error(f"HTTP {reply.status}: {reply.message}")
        return reply.body

    def label(self, snap: dict) -> str:
        return f"attached to pid {snap.get('pid', '?')}"

    def subscribe(self):
        from bitrouter.metrics import Subscription
        inbox = Subscription(INBOX)
        threading.Thread(target=self._follow, args=(inbox,), name="tui-events", daemon=True).start()
        return inbox

    def reload(self) -> tuple[str, str]:
        from bitrouter import client
        try:
            reply = self.admin.post("/admin/reload", timeout=30)
        except client.Unreachable as exc:
            return f"reload failed: {_cause(exc)}", "error"
        if reply.status in (404, 405):
            return f"this server has no POST /admin/reload; use `{hints.command('reload')}`", "warn"
        if reply.status != 200:
            return f"reload failed (HTTP {reply.status}): {_cause(reply.message)}", "error"
        notes = reply.body.get("notes") or []
        return "; ".join(["configuration reloaded", *notes]), "warn" if notes else "good"

    def close(self, inbox) -> None:
        self._stop.set()
        inbox.close()
        self.admin.close()

    def _follow(self, inbox) -> None:
        """Read the event stream into the inbox, reconnecting while the server is away."""
        from bitrouter import client
        from bitrouter.protocols import sse
        while not self._stop.is_set():
            try:
                with self.admin.stream("/admin/events?brief=1") as chunks:  # "something changed" is enough
                    inbox.push({"type": "connected"})
                    parser = sse.Parser()
                    for chunk in chunks:
                        if self._stop.is_set():
                            return
                        for event, _ in parser.feed(chunk):
                            inbox.push({"type": event or "message"})
            except client.Unreachable as exc:
                inbox.push({"type": "disconnected", "error": f"unreachable: {_cause(exc)}"})
            self._stop.wait(2.0)

    def _get_metrics(self):
        return self.admin.get(f"/admin/metrics?recent={RECENT}", timeout=3)


# ---------------------------------------------------------------- the loop


def _loop(term, source, inbox, view: View) -> None:
    """Wait for keys and events; re-read the snapshot when due; repaint when something changed."""
    snap, view.error = _fetch(source, {}, "")
    fetched = time.monotonic()
    frame, size, second, changed, dirty = None, None, None, True, False
    while not view.quitting:
        view.now, view.mode = time.time(), source.label(snap)
        if (term.width, term.height) != size:
            frame, size, changed = None, (term.width, term.height), True
        if changed or second != int(view.now):  # each second moves the uptime and running requests
            frame = _paint(term, render(snap, size[0], size[1], view), frame)
            changed, second = False, int(view.now)
        since = time.monotonic() - fetched
        if dirty:  # requests keep coming: sleep until the next refresh rather than wake for each
            time.sleep(max(0.0, REFRESH_MIN - since))
            items = inbox.wait(0)
        else:
            items = inbox.wait(max(0.01, min(1.0 - view.now % 1.0, REFRESH_IDLE - since)))
        for item in items:
            kind = item["type"]
            if kind == "key":
                changed, dirty = True, dirty or item["key"] == "r"  # show what a reload changed
                if _on_key(item["key"], snap, view, source, term.height):
                    return
            elif kind == "log":
                view.say(item["text"], "warn")
                changed = True
            elif kind == "disconnected":
                view.error, changed = item["error"], True
            elif kind != "resize":  # request events, connected, dropped: the snapshot is stale
                dirty = True
        if time.monotonic() - fetched >= (REFRESH_MIN if dirty else REFRESH_IDLE):
            snap, view.error = _fetch(source, snap, view.error)
            fetched, dirty, changed = time.monotonic(), False, True


def _fetch(source, snap: dict, error: str) -> tuple[dict, str]:
    """A fresh snapshot, or the last one with the reason the server could not be read."""
    try:
        return source.snapshot(), ""
    except Exception as exc:  # an attached server went away: keep showing what we had
        return snap, f"unreachable: {_cause(exc)}"


def _on_key(key: str, snap: dict, view: View, source, height: int) -> bool:
    """Apply one key to the view; True means quit."""
    page = max(1, height // 2)
    if key in ("q", "Q"):
        return True
    if key == "?":
        view.help = not view.help
    elif key == "KEY_ESCAPE":
        view.help = False
    elif key == "r":
        view.say(*source.reload())
    elif key == "p":
        view.paused = None if view.paused is not None else log_rows(snap)
    else:
        moves = {"KEY_UP": -1, "k": -1, "KEY_DOWN": 1, "j": 1, "KEY_PGUP": -page, "KEY_PGDOWN": page,
                 "KEY_HOME": -10**9, "g": -10**9, "KEY_END": 10**9, "G": 10**9}
        if key in moves:
            view.scroll = max(0, min(view.scroll + moves[key], len(view.rows(snap)) - 1))
    return False


def _read_keys(term, inbox, stop) -> None:
    """Keys (and size changes, which blessed does not report) into the inbox."""
    size = (term.width, term.height)
    while not stop.is_set():
        try:
            key = term.inkey(timeout=KEY_POLL)
        except OSError:  # the terminal went away
            inbox.push({"type": "key", "key": "q"})
            return
        if key:
            inbox.push({"type": "key", "key": key.name or str(key)})
        if (term.width, term.height) != size:
            size = (term.width, term.height)
            inbox.push({"type": "resize"})


def _paint(term, lines: list, previous) -> list:
    """Write only the lines that changed since the previous frame (all of them after a resize)."""
    colour = not os.environ.get("NO_COLOR")
    out = [term.home + term.clear] if previous is None else []
    for y, line in enumerate(lines):
        if previous is not None and y < len(previous) and previous[y] == line:
            continue
        out.append(term.move_yx(y, 0) + _styled(term, *line, colour) + term.clear_eol)
    if out:
        term.stream.write("".join(out))
        term.stream.flush()
    return lines


def _styled(term, style: str, text: str, colour: bool) -> str:
    attr, hue = STYLES.get(style, ("", ""))
    prefix = (getattr(term, attr) if attr else "") + (getattr(term, hue) if hue and colour else "")
    return prefix + text + term.normal if prefix else text


def _terminal():
    """A blessed Terminal that keeps cursor movement under NO_COLOR.

    blessed reads NO_COLOR as "no escape sequences at all", which would also drop cursor
    movement and the alternate screen; NO_COLOR only asks for no colour, so the painter
    leaves colours out itself and keeps bold and reverse.
    """
    import blessed
    saved = os.environ.pop("NO_COLOR", None)
    try:
        return blessed.Terminal()
    finally:
        if saved is not None:
            os.environ["NO_COLOR"] = saved


@contextmanager
def _captured_output(inbox):
    """While the screen is ours, log warnings go on screen and stray output waits until after."""
    pane = _LogPane(inbox)
    loggers = [logging.getLogger(), logging.getLogger("bitrouter")]
    # Handlers that write to the terminal would tear the screen; they rest until we leave.
    resting = [(lg, h) for lg in loggers for h in lg.handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for lg, h in resting:
        lg.removeHandler(h)
    for lg in loggers:  # both: the server's log setup may stop `bitrouter` propagating to root
        lg.addHandler(pane)
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = captured = io.StringIO()
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        for lg in loggers:
            lg.removeHandler(pane)
        for lg, h in resting:
            lg.addHandler(h)
        sys.stderr.write(captured.getvalue())


@contextmanager
def _signals_quit(view: View):
    """Ctrl-C, SIGTERM and SIGHUP end the dashboard the way `q` does, so cleanup always runs.

    The handler only sets a flag: raising KeyboardInterrupt could land in the key reader
    (a greenlet under gevent) and be lost there, and taking a lock could deadlock.
    """
    def quit_soon(*_):
        view.quitting = True
    previous = {sig: signal.signal(sig, quit_soon) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _LogPane(logging.Handler):
    """Log warnings shown in the dashboard's message line instead of on the raw terminal."""

    def __init__(self, inbox):
        super().__init__(logging.WARNING)
        self.inbox = inbox

    def emit(self, record) -> None:
        self.inbox.push({"type": "log", "text": f"{record.levelname.lower()}: {record.getMessage()}"})


# ---------------------------------------------------------------- rendering helpers


def _header(snap: dict, width: int, view: View) -> str:
    uptime = snap.get("uptime_seconds", 0) + max(0.0, view.now - snap.get("time", view.now))
    mode = view.mode + (f" ({view.error})" if view.error else "")
    listen = snap.get("listen", "?")
    state = "tokens" if snap.get("auth_required") else "open"
    auth = f"auth {snap.get('auth_mode', '?')}: {state}"
    parts = [f" BitRouter {snap.get('version', '?')}", listen, mode, auth, f"up {_duration(uptime)}"]
    # On a narrow screen the least informative parts go first: the scheme, the configured mode.
    for short in (None, (1, listen.partition("://")[2] or listen), (3, f"auth: {state}")):
        if short:
            parts[short[0]] = short[1]
        text = "  ".join(parts)
        if len(text) <= width:
            break
    return text


def _pane_rows(snap: dict, height: int) -> int:
    """Rows for the provider and route panes: what they need, up to a third of the screen."""
    need = max(len(snap.get("providers", [])), len(snap.get("routes", [])), 1)
    return min(need, max(2, (height - 12) // 3))


def _panes(snap: dict, width: int, rows: int) -> list:
    """Providers on the left, routes on the right: a title line and `rows` lines."""
    left_width = 38 if width < 100 else width // 2  # wide screens have room for the last error
    right_width = width - left_width - 1
    left = _providers(snap.get("providers", []), left_width, rows)
    right = _routes(snap.get("routes", []), right_width, rows)
    lines = []
    for i, ((lstyle, ltext), (rstyle, rtext)) in enumerate(zip(left, right)):
        style = "title" if i == 0 else (lstyle or rstyle)
        lines.append((style, _fit(_pad(ltext, left_width) + "|" + rtext, width)))
    return lines


def _providers(providers: list, width: int, rows: int) -> list:
    wide = width >= 48
    title = f"{'Providers':<10} {'health':<10} {'reqs':>5} {'p50':>8}" + (f" {'errs':>4}" if wide else "")
    lines = [("title", title)]
    for p in providers[:rows]:
        state = p["state"]
        if state == "cooling down":
            state = f"cooling {p['cooling_seconds']:.0f}s"
        text = f"{p['name']:<10.10} {state:<10.10} {p['requests']:>5} {_ms(p['p50_ms']):>8}"
        if wide:
            text += f" {p['errors']:>4}"
            if p["state"] != "ok" and p["last_error"]:
                text += " " + p["last_error"]
        style = {"ok": "", "failing": "error", "cooling down": "warn", "no key": "dim"}.get(p["state"], "")
        lines.append((style, _fit(text, width)))
    if not providers:
        lines.append(("dim", _fit(f"(none yet: run `{hints.command('init')}`)", width)))
    return _more(lines, len(providers), rows, width)


def _routes(routes: list, width: int, rows: int) -> list:
    dynamic = " (*dynamic)" if any(r["source"] == "dynamic" for r in routes) else ""
    lines = [("title", _fit(f"{'Routes':<11} {'strategy':<8} endpoints{dynamic}", width))]
    for r in routes[:rows]:
        name = r["model"] + ("*" if r["source"] == "dynamic" else "")
        balance = r["strategy"] == "load_balance"
        labels = [f"{e['provider']}:{e['model_id']}" + (f" x{e['weight']}" if balance and e["weight"] > 1 else "")
                  for e in r["endpoints"]]
        chain = (", " if balance else " > ").join(labels)
        lines.append(("", _fit(f"{_pad(name, 11)} {'balance' if balance else 'priority':<8} {chain}", width)))
    if not routes:
        lines.append(("dim", _fit("(no aliases: add some under models:)", width)))
    return _more(lines, len(routes), rows, width)


def _more(lines: list, total: int, rows: int, width: int) -> list:
    """Exactly rows+1 lines; the last says how many did not fit."""
    if total > rows:
        lines[rows] = ("dim", _fit(f"  ... {total - rows + 1} more", width))
    return lines[:rows + 1] + [("", "")] * (rows + 1 - len(lines))


def _log(snap: dict, width: int, height: int, view: View) -> list:
    """The request log: a column title and height-1 rows, newest first, from the scroll offset."""
    route_width = max(10, width - LOG_FIXED)
    title = (f"{'Requests':<8} {'protocol':<9} {'model -> endpoint':<{route_width}} {'status':>6} "
             f"{'latency':>7} {'tokens':>11} {'cost':>8}")
    lines = [("title", _fit(title, width))]
    rows = view.rows(snap)
    start = min(view.scroll, max(0, len(rows) - 1))
    for r in rows[start:start + height - 1]:
        lines.append(_log_line(r, route_width, width, view.now))
    if not rows:
        hint = f"(no requests yet: send one to {snap.get('listen', '')}/v1/chat/completions)"
        lines.append(("dim", _fit(hint, width)))
    return lines + [("", "")] * (height - len(lines))


def _log_line(r: dict, route_width: int, width: int, now: float) -> tuple[str, str]:
    running = not r["status"]
    target = r["model"] + (f" -> {r['upstream']}" if r["upstream"] else "")
    if r["error"]:
        target += f"  {r['error']}"
    if running:
        status, latency, tokens, cost = "...", _ms((now - r["started"]) * 1000), "", ""
    else:
        status, latency = str(r["status"]), _ms(r["latency_ms"])
        tokens = f"{_count(r['usage']['input'])}/{_count(r['usage']['output'])}"
        cost = _usd(r["cost_micro_usd"])
    text = (f"{time.strftime('%H:%M:%S', time.localtime(r['started']))} {r['protocol']:<9.9} "
            f"{_pad(target, route_width)} {status:>6} {latency:>7} {tokens:>11} {cost:>8}")
    style = "running" if running else "error" if r["status"] >= 400 else ""
    return style, _fit(text, width)


def _help(width: int, height: int) -> list:
    lines = [(style, _fit(text, width)) for style, text in HELP[:height]]
    return lines + [("", "")] * (height - len(lines))


def _totals(snap: dict, width: int) -> list:
    totals = snap.get("totals", {})
    lines = []
    for label, key in (("Since start", "since_start"), ("Today", "today")):
        t = totals.get(key) or {}
        errors = t.get("errors", 0)
        text = (f"{label + ':':<13}{t.get('requests', 0)} requests, {errors} error{'' if errors == 1 else 's'}, "
                f"{_count(t.get('input_tokens', 0))} in / {_count(t.get('output_tokens', 0))} out tokens, "
                f"{_usd(t.get('cost_micro_usd', 0))}")
        lines.append(("", _fit(text, width)))
    hits = snap.get("guardrails") or []
    if hits:  # only once a guardrail has found something (docs/guardrails.md)
        by_action = {a: sum(h["hits"] for h in hits if h["action"] == a) for a in ("block", "redact", "warn")}
        by_pattern = {}
        for h in hits:
            by_pattern[h["pattern"]] = by_pattern.get(h["pattern"], 0) + h["hits"]
        text = (f"{'Guardrails:':<13}{by_action['block']} blocked, {by_action['redact']} redacted, "
                f"{by_action['warn']} warned ("
                + ", ".join(f"{p} {n}" for p, n in sorted(by_pattern.items(), key=lambda i: -i[1])) + ")")
        lines.append(("warn" if by_action["block"] else "", _fit(text, width)))
    return lines


def _footer(snap: dict, width: int, log_height: int, view: View) -> tuple[str, str]:
    if view.message and view.now < view.message_until:
        return view.message_style, _fit(" " + view.message, width)
    keys = " q quit  r reload  p " + ("resume" if view.paused is not None else "pause") + \
           "  Up/Down scroll  ? help"
    rows = view.rows(snap)
    state = [f"{len(snap.get('running', []))} running"]
    if view.paused is not None:
        state.insert(0, "[paused]")
    if view.scroll and rows:
        first = min(view.scroll, len(rows) - 1) + 1
        state.append(f"rows {first}-{min(len(rows), first + log_height - 2)} of {len(rows)}")
    return "dim", _fit(keys + "  ".join(state).rjust(max(0, width - len(keys) - 1)), width)


# Control characters from upstream text (an error message) could move the cursor or worse.
_CONTROLS = {c: " " for c in [*range(0x20), *range(0x7f, 0xa0)]}


def _fit(text: str, width: int) -> str:
    """Safe text cut to `width` terminal cells (an ellipsis marks the cut); never pads."""
    text = str(text).translate(_CONTROLS)
    if _cells(text) <= width:
        return text
    low, high = 0, len(text)  # the longest prefix that leaves a cell for the ellipsis
    while low < high:
        mid = (low + high + 1) // 2
        if _cells(text[:mid]) <= width - 1:
            low = mid
        else:
            high = mid - 1
    return text[:low] + "…" if width else ""


def _pad(text: str, width: int) -> str:
    """Fit and pad to exactly `width` cells."""
    text = _fit(text, width)
    return text + " " * (width - _cells(text))


def _cells(text: str) -> int:
    """Terminal cells the text takes (wide CJK characters take two)."""
    if text.isascii():
        return len(text)
    from wcwidth import wcswidth
    return max(0, wcswidth(text))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    clock = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock


def _ms(value) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.1f}ms"
    if value < 1000:
        return f"{value:.0f}ms"
    return f"{value / 1000:.2f}s" if value < 10_000 else f"{value / 1000:.1f}s"


def _count(n: int) -> str:
    if n < 10_000:
        return str(n)
    return f"{n / 1000:.1f}k" if n < 1_000_000 else f"{n / 1_000_000:.1f}M"


def _usd(micro: int) -> str:
    if not micro:
        return "$0"
    if micro >= 1_000_000:
        return f"${micro / 1e6:,.2f}"
    # Below a cent of a cent four decimals would read $0.0000 beside a real $0: show the digits.
    return "$" + f"{micro / 1e6:.{4 if micro >= 100 else 6}f}".rstrip("0")


def _cause(exc) -> str:
    """A failure in a few words: no configuration path in front, a hint when the server is gone."""
    import re
    text = str(exc)
    if text == "connection refused":
        return "connection refused (has the server stopped?)"
    # "configuration not reloaded (...): /home/x/bitrouter.yaml: models.x: ..." -> "models.x: ..."
    return re.sub(r"^(.*?: )?\S+\.ya?ml: ", "", text)
