"""The live dashboard: rendering on fixed snapshots, the admin endpoints over HTTP, and
`bitrouter` itself in a pseudo-terminal (in-process server, attach, wizard, quitting)."""

import re
import signal
import socket
import threading
import time

import gevent
import pexpect
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from wcwidth import wcswidth

import bitrouter
from bitrouter import tui
from bitrouter.metrics import FOLD_SECONDS, Metrics, percentile
from bitrouter.protocols import Usage
from conftest import BITROUTER, clean_env, free_port, run_cli, wait_until
from fakes import FakeUpstream, Reply, chat_stream, error

NOW = 1_800_000_000.0
SECRET = "sk-dashboard-secret-0123456789"
# xterm-256color's rmcup (leave the alternate screen) and cnorm (show the cursor again).
EXIT_FULLSCREEN = "\x1b[?1049l"
CURSOR_VISIBLE = "\x1b[?12l\x1b[?25h"


# ---------------------------------------------------------------- fixed snapshots


def ep(provider, model_id, weight=1):
    return {"provider": provider, "model_id": model_id, "weight": weight, "override": False}


def record(id, model, upstream="", status=200, started=NOW - 60, latency_ms=812.3, tokens=(0, 0), cost=0,
           error="", protocol="openai", stream=False):
    return {"id": id, "started": started, "protocol": protocol, "model": model, "stream": stream,
            "upstream": upstream, "status": status, "latency_ms": latency_ms, "attempts": 1,
            "usage": {"input": tokens[0], "output": tokens[1], "cache_read": 0, "cache_write": 0,
                      "reasoning": 0},
            "cost_micro_usd": cost, "error": error, "account": "", "token_hash": ""}


def provider(name, state="ok", requests=0, errors=0, p50=None, last_error="", cooling=0, configured=True):
    return {"name": name, "protocol": "openai", "configured": configured, "state": state,
            "cooling_seconds": cooling, "last_error": last_error, "requests": requests, "errors": errors,
            "p50_ms": p50, "endpoints": []}


def snapshot():
    """What GET /admin/metrics returns for a server with some history (one request running)."""
    return {
        "version": "0.1.0", "pid": 4242, "time": NOW, "listen": "http://127.0.0.1:8787",
        "mode": "foreground", "auth_mode": "auto", "auth_required": True, "started": NOW - 3725,
        "uptime_seconds": 3725.0,
        "providers": [
            provider("anthropic", "cooling down", 7, 3, 812.0, "HTTP 529: overloaded", cooling=4.2),
            provider("mock", "ok", 12, 0, 0.4),
            provider("openai", "failing", 40, 1, 1234.5, "HTTP 500: upstream exploded"),
            provider("groq", "no key", configured=False),
        ],
        "routes": [
            {"model": "default", "source": "alias", "strategy": "priority",
             "endpoints": [ep("openai", "gpt-4o"), ep("anthropic", "claude-sonnet-4-5")]},
            {"model": "fast", "source": "dynamic", "strategy": "load_balance",
             "endpoints": [ep("mock", "echo", 2), ep("openai", "gpt-4o-mini")]},
        ],
        "running": [record(5, "default", "openai:gpt-4o", status=0, started=NOW - 2.5, stream=True,
                           latency_ms=0)],
        "recent": [
            record(4, "nope", status=404, latency_ms=0.3, error="unknown model 'nope'"),
            record(3, "default", "anthropic:claude-sonnet-4-5", tokens=(1200, 345), cost=4567,
                   protocol="anthropic"),
            record(2, "fast", "mock:echo", latency_ms=0.4, tokens=(12345, 2_500_000)),
            record(1, "mock:echo", "mock:echo", latency_ms=15234, cost=12_340_000, protocol="gemini"),
        ],
        "totals": {"since_start": {"requests": 4, "errors": 1, "input_tokens": 13545,
                                   "output_tokens": 2500345, "cost_micro_usd": 12_344_567},
                   "today": {"date": "2027-01-15", "requests": 3, "errors": 1, "input_tokens": 1200,
                             "output_tokens": 345, "cost_micro_usd": 4567}},
    }


def empty_snapshot():
    snap = snapshot()
    snap.update(providers=[], routes=[], running=[], recent=[])
    return snap


def clock(ts):
    return time.strftime("%H:%M:%S", time.localtime(ts))


def screen(snap, width, height, **view):
    lines = tui.render(snap, width, height, tui.View(**{"mode": "attached to pid 4242", "now": NOW, **view}))
    assert len(lines) == height
    for _, text in lines:
        assert 0 <= wcswidth(text) <= width, repr(text)
    return lines


def texts(lines):
    return [text for _, text in lines]


# ---------------------------------------------------------------- rendering


def test_render_80x24():
    lines = screen(snapshot(), 80, 24)
    text = texts(lines)
    assert text[0] == " BitRouter 0.1.0  127.0.0.1:8787  attached to pid 4242  auth: tokens  up 1:02:05"
    assert text[1:6] == [
        "Providers  health      reqs      p50  |Routes      strategy endpoints (*dynamic)",
        "anthropic  cooling 4s     7    812ms  |default     priority openai:gpt-4o > ant…",
        "mock       ok            12    0.4ms  |fast*       balance  mock:echo x2, opena…",
        "openai     failing       40    1.23s  |",
        "groq       no key         0        -  |",
    ]
    assert text[6] == "Requests protocol  model -> endpoint         status latency      tokens     cost"
    assert text[7:12] == [  # newest first; the running stream shows ... and its time so far
        f"{clock(NOW - 2.5)} openai    default -> openai:gpt-4o     ...   2.50s",
        f"{clock(NOW - 60)} openai    nope  unknown model 'nop…    404   0.3ms         0/0       $0",
        f"{clock(NOW - 60)} anthropic default -> anthropic:cla…    200   812ms    1200/345  $0.0046",
        f"{clock(NOW - 60)} openai    fast -> mock:echo            200   0.4ms  12.3k/2.5M       $0",
        f"{clock(NOW - 60)} gemini    mock:echo -> mock:echo       200   15.2s         0/0   $12.34",
    ]
    assert text[12:21] == [""] * 9
    assert text[21:23] == ["Since start: 4 requests, 1 error, 13.5k in / 2.5M out tokens, $12.34",
                           "Today:       3 requests, 1 error, 1200 in / 345 out tokens, $0.0046"]
    assert text[23] == " q quit  r reload  p pause  Up/Down scroll  ? help" + " " * 20 + "1 running"
    styles = [style for style, _ in lines]
    assert styles[:7] == ["header", "title", "warn", "", "error", "dim", "title"]
    assert styles[7:9] == ["running", "error"]


def test_render_120x40():
    text = texts(screen(snapshot(), 120, 40))
    assert text[0] == (" BitRouter 0.1.0  http://127.0.0.1:8787  attached to pid 4242  auth auto: tokens  "
                       "up 1:02:05")
    assert text[1].startswith("Providers  health      reqs      p50 errs")
    assert text[2].startswith("anthropic  cooling 4s     7    812ms    3 HTTP 529: overloa…|default     "
                              "priority openai:gpt-4o > anthropic:claude-s")
    assert text[4].startswith("openai     failing       40    1.23s    1 HTTP 500: upstrea…|")
    assert text[6].startswith("Requests protocol  model -> endpoint ")
    assert text[9] == (f"{clock(NOW - 60)} anthropic default -> anthropic:claude-sonnet-4-5" + " " * 31
                       + "200   812ms    1200/345  $0.0046")
    assert text[37] == "Since start: 4 requests, 1 error, 13.5k in / 2.5M out tokens, $12.34"
    assert text[39].endswith("1 running")


def test_render_empty_state_guides_a_newcomer():
    text = texts(screen(empty_snapshot(), 80, 24))
    assert text[2] == "(none yet: run `bitrouter init`)      |(no aliases: add some under models:)"
    assert text[3].startswith("Requests ")
    assert text[4] == "(no requests yet: send one to http://127.0.0.1:8787/v1/chat/completions)"


def test_render_pause_scroll_and_help():
    snap = snapshot()
    frozen = tui.log_rows(snap)
    newer = snapshot()
    newer["recent"].insert(0, record(6, "later", "mock:echo"))
    paused = texts(screen(newer, 80, 24, paused=frozen))
    assert "later" not in "\n".join(paused)
    assert paused[7].startswith(f"{clock(NOW - 2.5)} openai    default -> openai:gpt-4o")
    assert "[paused]" in paused[23]
    assert "later -> mock:echo" in texts(screen(newer, 80, 24))[7]

    scrolled = texts(screen(snap, 80, 24, scroll=2))
    assert scrolled[7].startswith(f"{clock(NOW - 60)} anthropic default")
    assert scrolled[23].endswith("1 running  rows 3-5 of 5")

    helped = texts(screen(snap, 80, 24, help=True))
    assert helped[6] == "Keys"
    assert helped[7].startswith("  q            quit")


def test_render_more_items_than_the_pane_holds():
    snap = snapshot()
    snap["providers"] = [provider(f"p{i}", requests=i) for i in range(9)]
    text = texts(screen(snap, 80, 24))
    assert [line[:3] for line in text[2:5]] == ["p0 ", "p1 ", "p2 "]
    assert text[5].startswith("  ... 6 more  ")
    assert text[6].startswith("Requests ")


def test_render_message_and_unreachable_server():
    text = texts(screen(snapshot(), 80, 24, message="reload failed: bad yaml", message_until=NOW + 1,
                        error="unreachable: connection refused"))
    assert text[23] == " reload failed: bad yaml"
    assert text[0].startswith(" BitRouter 0.1.0  127.0.0.1:8787  attached to pid 4242 (unreachable: conn")


def test_render_neutralises_control_characters_and_wide_text():
    snap = snapshot()
    snap["recent"][0]["error"] = "evil \x1b[2J\x1b]0;title\x07 and 中文错误信息很长很长很长很长很长"
    text = texts(screen(snap, 80, 24))
    assert all("\x1b" not in line and "\x07" not in line for line in text)
    assert wcswidth(text[8]) == 80


sizes = st.tuples(st.integers(1, 200), st.integers(1, 60))
words = st.text(st.characters(min_codepoint=1, max_codepoint=0x9fff, exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(size=sizes, model=words, err=words, name=words, scroll=st.integers(0, 10), help=st.booleans(),
       n=st.integers(0, 30))
def test_render_always_fits_the_terminal(size, model, err, name, scroll, help, n):
    snap = snapshot()
    snap["recent"] = [record(i, model or "m", name, error=err, status=500 if err else 200) for i in range(n)]
    snap["routes"][0]["model"] = name or "r"
    screen(snap, *size, scroll=scroll, help=help, message=err, message_until=NOW + (1 if err else -1))


# ---------------------------------------------------------------- metrics in process


def finish(metrics, model, status=200, upstream="mock:echo", latency=5.0):
    rec = metrics.begin("openai", model, False)
    rec.upstream, rec.status, rec.latency_ms = upstream, status, latency
    metrics.finish(rec)
    return rec


def test_slow_subscriber_loses_the_oldest_events_and_never_blocks():
    metrics = Metrics()
    sub = metrics.subscribe(keep=2)
    for model in "abc":  # one event per request: three into an inbox of two
        finish(metrics, model)
    events = sub.wait(0)
    assert [(e["type"], e["request"]["model"]) for e in events] == [("finished", "b"), ("finished", "c")]
    assert sub.dropped == 1
    assert events[0]["request"]["status"] == 200
    assert sub.wait(0.01) == []
    metrics.close()
    assert sub.closed and metrics.subscribe().closed


def test_events_carry_the_record_as_it_was():
    metrics = Metrics()
    sub = metrics.subscribe()
    rec = metrics.begin("openai", "m", True)  # a stream: announced once its upstream answered
    assert sub.wait(0) == []
    rec.upstream = "mock:echo"
    metrics.routed(rec)
    rec.status = 200
    metrics.finish(rec)
    started, finished = sub.wait(0)
    assert (started["type"], finished["type"]) == ("started", "finished")
    assert started["request"]["status"] == 0 and finished["request"]["status"] == 200
    assert started["request"]["upstream"] == "mock:echo"
    assert started["request"]["id"] == finished["request"]["id"] == rec.id


def test_no_event_is_built_without_a_subscriber():
    metrics = Metrics()
    finish(metrics, "m")
    sub = metrics.subscribe()
    finish(metrics, "n")
    assert [e["seq"] for e in sub.wait(0)] == [1]


def test_today_totals_start_afresh_after_midnight():
    now = [time.mktime((2027, 1, 15, 23, 59, 0, 0, 0, -1))]
    metrics = Metrics(clock=lambda: now[0])
    finish(metrics, "late", status=502)
    assert metrics.snapshot()["totals"]["today"] == {"date": "2027-01-15", "requests": 1, "errors": 1,
                                                     "input_tokens": 0, "output_tokens": 0,
                                                     "cost_micro_usd": 0}
    now[0] += 120
    totals = metrics.snapshot()["totals"]
    assert totals["today"]["date"] == "2027-01-16" and totals["today"]["requests"] == 0
    assert totals["since_start"]["requests"] == 1 and totals["since_start"]["errors"] == 1
    now[0] += 86400  # a day later, the first request itself starts the new day
    rec = metrics.begin("openai", "next", False)
    rec.upstream, rec.status, rec.usage = "other:m", 200, Usage(output=7)
    metrics.finish(rec)
    assert metrics.snapshot()["totals"] == {
        "since_start": {"requests": 2, "errors": 1, "input_tokens": 0, "output_tokens": 7, "cost_micro_usd": 0},
        "today": {"date": "2027-01-17", "requests": 1, "errors": 0, "input_tokens": 0, "output_tokens": 7,
                  "cost_micro_usd": 0}}


def test_percentile_is_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([7.0], 50) == 7.0
    assert percentile([4, 1, 3, 2], 50) == 2
    assert percentile(range(1, 101), 99) == 99


# ---------------------------------------------------------------- the admin endpoints over HTTP


MOCK = {"models": {"default": {"endpoints": ["mock:echo"]}}}


def chat(url, model, text="hi", stream=False, **kw):
    return requests.post(url + "/v1/chat/completions", timeout=10, stream=stream, **kw,
                         json={"model": model, "messages": [{"role": "user", "content": text}], "stream": stream})


def metrics_of(server, **params):
    resp = requests.get(server.url + "/admin/metrics", params=params, timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_admin_metrics_snapshot(start_server):
    server = start_server(MOCK)
    assert chat(server.url, "default", "one two").status_code == 200
    assert chat(server.url, "mock:echo").status_code == 200
    assert chat(server.url, "nope").status_code == 404
    data = metrics_of(server)
    assert data["version"] == bitrouter.__version__
    assert data["pid"] == server.proc.pid
    assert data["listen"] == server.url
    assert data["mode"] == "foreground"
    assert data["auth_mode"] == "auto" and data["auth_required"] is False
    assert 0 <= data["uptime_seconds"] < 60
    (mock,) = data["providers"]
    assert mock["name"] == "mock" and mock["state"] == "ok" and mock["requests"] == 2
    assert mock["errors"] == 0 and mock["p50_ms"] >= 0
    assert [e["endpoint"] for e in mock["endpoints"]] == ["mock:echo"]
    assert data["routes"] == [{"model": "default", "source": "alias", "strategy": "priority",
                               "endpoints": [{"provider": "mock", "model_id": "echo", "weight": 1,
                                              "override": False}]}]
    assert [(r["model"], r["status"], r["upstream"]) for r in data["recent"]] == [
        ("nope", 404, ""), ("mock:echo", 200, "mock:echo"), ("default", 200, "mock:echo")]
    assert data["recent"][2]["usage"]["input"] == 2 and data["recent"][2]["usage"]["output"] == 2
    assert "unknown model 'nope'" in data["recent"][0]["error"]
    assert data["running"] == []
    since = data["totals"]["since_start"]
    assert (since["requests"], since["errors"], since["input_tokens"]) == (3, 1, 3)
    assert data["totals"]["today"]["date"] == time.strftime("%Y-%m-%d")
    assert [r["model"] for r in metrics_of(server, recent=1)["recent"]] == ["nope"]
    bad = requests.get(server.url + "/admin/metrics", params={"recent": "lots"}, timeout=5)
    assert bad.status_code == 400
    assert "recent" in bad.json()["error"]["message"]


def upstream_config(fake, **routing):
    return {"providers": {"up": {"derives": "openai", "api_base": fake.url + "/v1", "api_key": SECRET}},
            "models": {"slow": {"endpoints": ["up:slow"]},
                       "bad": {"endpoints": ["up:bad"], "cooldown_failures": 1, "cooldown_seconds": 60}},
            **routing}


def gated(gate):
    def behaviour(req):
        if req.body["model"] == "bad":
            return error(500, f"upstream exploded; your key {SECRET} is fine")
        return Reply(frames=chat_stream(words=("slow", " words")), gate=gate)
    return behaviour


def test_running_streams_and_provider_health(start_server):
    gate = threading.Event()
    with FakeUpstream(gated(gate)) as fake:
        server = start_server(upstream_config(fake))
        stream = chat(server.url, "slow", stream=True)
        assert stream.status_code == 200
        running = wait_until(lambda: metrics_of(server)["running"], what="a running stream")
        assert [(r["model"], r["upstream"], r["status"], r["stream"]) for r in running] == [
            ("slow", "up:slow", 0, True)]
        gate.set()
        body = b"".join(stream.iter_content(None))
        assert b'"slow"' in body and b'" words"' in body
        done = wait_until(lambda: metrics_of(server)["recent"], what="the stream to finish")[0]
        assert (done["status"], done["usage"]["input"], done["usage"]["output"]) == (200, 5, 3)

        assert chat(server.url, "bad").status_code >= 500
        (up,) = [p for p in metrics_of(server)["providers"] if p["name"] == "up"]
    assert up["state"] == "cooling down" and 0 < up["cooling_seconds"] <= 60
    assert "upstream exploded" in up["last_error"]
    assert SECRET not in up["last_error"] and "sk-d..." in up["last_error"]
    by_endpoint = {e["endpoint"]: e for e in up["endpoints"]}
    assert by_endpoint["up:slow"]["state"] == "ok" and by_endpoint["up:slow"]["requests"] == 1
    assert by_endpoint["up:bad"]["state"] == "cooling down" and by_endpoint["up:bad"]["errors"] == 1


class EventReader:
    """Collects SSE lines from /admin/events (or another path) in a background thread."""

    def __init__(self, url, path="/admin/events"):
        self.resp = requests.get(url + path, stream=True, timeout=10)
        self.lines = []
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for line in self.resp.iter_lines(decode_unicode=True):
                self.lines.append(line)
        except requests.RequestException:  # the server went away mid-stream
            pass
        self.ended.set()

    def events(self):
        import json
        return [json.loads(line[len("data: "):]) for line in list(self.lines) if line.startswith("data: ")]


def test_admin_events_stream(start_server):
    server = start_server({**MOCK, "server": {"ping_interval": 0.2}})
    reader = EventReader(server.url)
    assert reader.resp.headers["content-type"].startswith("text/event-stream")
    wait_until(lambda: reader.lines, what="the opening comment")
    assert reader.lines[0] == ": bitrouter events"
    assert chat(server.url, "default", "hello events").status_code == 200
    assert chat(server.url, "nope").status_code == 404
    streamed = chat(server.url, "default", "a stream", stream=True)
    assert streamed.status_code == 200 and b"[DONE]" in streamed.content
    wait_until(lambda: len(reader.events()) >= 4, what="four events")
    events = reader.events()
    assert [(e["type"], e["request"]["model"], e["request"]["stream"]) for e in events] == [
        ("finished", "default", False), ("finished", "nope", False),
        ("started", "default", True), ("finished", "default", True)]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    done = events[0]["request"]
    assert (done["status"], done["upstream"], done["usage"]["output"]) == (200, "mock:echo", 2)
    assert events[1]["request"]["status"] == 404 and "unknown model" in events[1]["request"]["error"]
    assert events[2]["request"]["upstream"] == "mock:echo" and events[2]["request"]["status"] == 0
    named = [line for line in reader.lines if line.startswith("event: ")]
    assert named[:4] == ["event: finished", "event: finished", "event: started", "event: finished"]
    wait_until(lambda: ": keep-alive" in reader.lines, what="a keep-alive comment while idle")


def test_brief_admin_events_say_what_happened_without_the_request(start_server):
    server = start_server(MOCK)
    brief, whole = EventReader(server.url, "/admin/events?brief=1"), EventReader(server.url)
    wait_until(lambda: brief.lines and whole.lines, what="the opening comments")
    assert chat(server.url, "default", "hello events").status_code == 200
    assert chat(server.url, "default", "a stream", stream=True).status_code == 200
    wait_until(lambda: len(brief.events()) >= 3 and len(whole.events()) >= 3, what="three events each")
    assert [(e["type"], e["request"]["model"]) for e in whole.events()] == [
        ("finished", "default"), ("started", "default"), ("finished", "default")]
    assert brief.events() == [{"type": e["type"], "seq": e["seq"]} for e in whole.events()]
    assert [line for line in brief.lines if line.startswith("event: ")] == [
        "event: finished", "event: started", "event: finished"]


def test_a_brief_inbox_keeps_only_the_newest_of_consecutive_events_of_one_type():
    metrics = Metrics()
    brief, whole = metrics.subscribe(brief=True), metrics.subscribe()

    def request(stream=False):
        record = metrics.begin("openai", "default", stream)
        record.upstream = "mock:echo"
        metrics.routed(record)  # a stream announces itself
        record.status = 200
        metrics.finish(record)

    for _ in range(3):
        request()
    request(stream=True)
    assert [e["type"] for e in whole.wait(0)] == ["finished"] * 3 + ["started", "finished"]
    assert brief.wait(0) == [{"type": "finished", "seq": 3}, {"type": "started", "seq": 4},
                             {"type": "finished", "seq": 5}]
    request()  # what the reader took is not replaced: a new event waits again
    assert brief.wait(0) == [{"type": "finished", "seq": 6}] and brief.dropped == 0


def test_with_a_timer_finished_requests_are_counted_together_and_never_read_stale():
    metrics = Metrics()
    metrics.timer = gevent.get_hub().loop.timer(FOLD_SECONDS)  # as server.start sets it
    heard, folded = [], []
    metrics.listeners.append(heard.append)
    metrics.deferred_listeners.append(folded.append)
    sub = metrics.subscribe()
    first, second = finish(metrics, "a"), finish(metrics, "b")
    assert heard == [first, second] and folded == [] and sub.wait(0) == []
    wait_until(lambda: gevent.sleep(0.001) or folded, what="the timer's fold")  # the hub runs the timer
    assert folded == [first, second]
    assert [e["request"]["model"] for e in sub.wait(0)] == ["a", "b"]

    third = finish(metrics, "c")  # read before the timer fires: counted first
    assert metrics.snapshot()["totals"]["since_start"]["requests"] == 3 and folded[-1] is third
    finish(metrics, "d")
    assert metrics.exported()[0]["requests"][(("endpoint", "mock:echo"), ("protocol", "openai"),
                                              ("route", ""), ("status", "200"))] == 4
    finish(metrics, "e")
    stream = metrics.begin("openai", "s", True)
    metrics.routed(stream)  # its `started` comes after the `finished` of what finished before
    assert [(e["type"], e["request"]["model"]) for e in sub.wait(0)] == [
        ("finished", "c"), ("finished", "d"), ("finished", "e"), ("started", "s")]

    finish(metrics, "f")
    metrics.close()  # the server is stopping: what waits is folded in, and later records at once
    assert [r.model for r in folded[-2:]] == ["e", "f"]
    finish(metrics, "g")
    assert folded[-1].model == "g" and len(folded) == 7
    metrics.timer.stop()


def test_a_stalled_event_reader_does_not_hold_up_requests(start_server):
    server = start_server(MOCK)
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /admin/events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
    with requests.Session() as http:
        for i in range(600):
            resp = http.post(server.url + "/v1/chat/completions", timeout=5,
                             json={"model": "default", "messages": [{"role": "user", "content": f"n{i}"}]})
            assert resp.status_code == 200
    assert metrics_of(server)["totals"]["since_start"]["requests"] == 600
    stalled.close()


def test_stopping_ends_event_streams_without_waiting_for_the_drain_timeout(start_server):
    server = start_server(MOCK)
    reader = EventReader(server.url)
    wait_until(lambda: reader.lines, what="the opening comment")
    clock_start = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - clock_start < 10  # drain_timeout is 30 s
    assert reader.ended.wait(5)


# ---------------------------------------------------------------- `bitrouter` in a pseudo-terminal


class Tty:
    """`bitrouter` in a pseudo-terminal that answers cursor-position queries like a real one."""

    MOVE = re.compile(r"\x1b\[(\d+);(\d+)H")
    NOISE = re.compile(r"\x1b\[[0-9;?>]*[A-Za-z]|\x1b\(B|\x1b[=>]")

    def __init__(self, home, *args, rows=24, cols=80, env=None):
        env = {**(env or clean_env(home)), "TERM": "xterm-256color"}
        self.rows = rows
        self.child = pexpect.spawn(BITROUTER, ["--home-dir", str(home), *args], env=env,
                                   dimensions=(rows, cols), encoding="utf-8", timeout=10)
        self.raw = ""

    def pump(self) -> None:
        try:
            data = self.child.read_nonblocking(65536, timeout=0.05)
        except (pexpect.TIMEOUT, pexpect.EOF):
            return
        if "\x1b[6n" in data:  # blessed asks where the cursor is before it starts
            self.child.send("\x1b[1;1R")
        self.raw += data

    def screen(self) -> list[str]:
        """The current screen rows, rebuilt from every positioned write since the last clear."""
        lines = [""] * self.rows
        frame = self.raw.rsplit("\x1b[2J", 1)[-1]
        for part in re.split(r"(?=\x1b\[\d+;\d+H)", frame):
            m = self.MOVE.match(part)
            if m and int(m.group(1)) <= self.rows:
                lines[int(m.group(1)) - 1] = self.NOISE.sub("", part[m.end():])
        return lines

    def wait_screen(self, check, what, timeout=15):
        def ready():
            self.pump()
            return check(self.screen())
        return wait_until(ready, timeout, interval=0, what=what + "\n" + "\n".join(self.screen()))

    def wait_output(self, text, timeout=15):
        def seen():
            self.pump()
            return text in self.raw
        wait_until(seen, timeout, interval=0, what=repr(text) + " in\n" + self.raw[-2000:])

    def wait_exit(self, timeout=20) -> int:
        def gone():
            self.pump()
            return not self.child.isalive()
        wait_until(gone, timeout, interval=0, what="the process to exit")
        self.pump()
        self.child.close()
        return self.child.exitstatus

    def log_rows(self):
        lines = self.screen()
        start = next(i for i, line in enumerate(lines) if line.startswith("Requests "))
        return lines[start + 1:]


def restored(raw: str) -> bool:
    """The alternate screen was left and the cursor shown again after the last painted line."""
    last_paint = raw.rfind("\x1b[K")  # every painted line ends by clearing to its end
    return raw.rfind(EXIT_FULLSCREEN) > last_paint and raw.rfind(CURSOR_VISIBLE) > last_paint


def write_config(home, cfg):
    import yaml
    (home / "bitrouter.yaml").write_text(yaml.safe_dump(cfg))


def test_dashboard_runs_the_server_shows_requests_and_drains_on_quit(home):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gate = threading.Event()
    with FakeUpstream(gated(gate)) as fake:
        write_config(home, {**upstream_config(fake), "server": {"listen": f"127.0.0.1:{port}"},
                            "models": {"default": {"endpoints": ["mock:echo"]},
                                       "slow": {"endpoints": ["up:slow"]}}})
        tty = Tty(home)
        tty.wait_screen(lambda s: "in-process" in s[0], "the header")
        assert tty.screen()[0].startswith(f" BitRouter {bitrouter.__version__}  {url[7:]}  in-process  "
                                          "auth auto: open  up 0:00:0")
        for i in range(3):
            assert chat(url, "mock:echo", f"hello {i}").status_code == 200
        assert chat(url, "missing-model").status_code == 404
        tty.wait_screen(lambda s: any("missing-model" in line for line in s), "the requests in the log")
        rows = tty.log_rows()
        assert rows[0].split()[1:4] == ["openai", "missing-model", "unknown"]
        assert [row.split()[2:6] for row in rows[1:4]] == [["mock:echo", "->", "mock:echo", "200"]] * 3
        assert "Since start: 4 requests, 1 error, 6 in / 6 out tokens, $0" in tty.screen()

        answer = {}
        slow = threading.Thread(target=lambda: answer.update(resp=chat(url, "slow", stream=True)))
        slow.start()
        tty.wait_screen(lambda s: any("slow -> up:slow" in line and "..." in line for line in s),
                        "the stream while it runs")
        tty.child.send("q")
        tty.wait_output("letting 1 running request(s) finish")
        assert tty.child.isalive()
        gate.set()
        slow.join(10)
        assert answer["resp"].status_code == 200 and b"words" in answer["resp"].content
        assert tty.wait_exit() == 0
    assert restored(tty.raw)
    assert "\x1b[31m" not in tty.raw and "\x1b[7m" in tty.raw  # NO_COLOR: no colour, reverse stays
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/health", timeout=2)


def test_keys_pause_scroll_help_reload_and_resize(home):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    write_config(home, {**MOCK, "server": {"listen": f"127.0.0.1:{port}"}})
    tty = Tty(home)
    tty.wait_screen(lambda s: "in-process" in s[0], "the header")
    with requests.Session() as http:
        for i in range(30):
            http.post(url + "/v1/chat/completions", timeout=5,
                      json={"model": "mock:echo", "messages": [{"role": "user", "content": f"n{i}"}]})
    tty.wait_screen(lambda s: s[-3].startswith("Since start: 30 requests"), "thirty requests")

    tty.child.send("p")
    tty.wait_screen(lambda s: "[paused]" in s[-1], "the paused marker")
    assert chat(url, "after-pause").status_code == 404
    tty.wait_screen(lambda s: s[-3].startswith("Since start: 31 requests"), "totals that keep counting")
    assert not any("after-pause" in row for row in tty.log_rows())
    tty.child.send("p")
    tty.wait_screen(lambda s: "after-pause" in tty.log_rows()[0], "the log resumed")

    top = tty.log_rows()[0]
    tty.child.send("jj")
    tty.wait_screen(lambda s: "rows 3-19 of 31" in s[-1], "the scroll position")
    assert tty.log_rows()[0] != top
    tty.child.send("\x1b[A")  # Up
    tty.wait_screen(lambda s: "rows 2-18 of 31" in s[-1], "one row back up")
    tty.child.send("g")
    tty.wait_screen(lambda s: tty.log_rows()[0] == top, "the top again")

    tty.child.send("?")
    tty.wait_screen(lambda s: "Keys" in s, "the help")
    tty.child.send("?")
    tty.wait_screen(lambda s: "Keys" not in s, "the help closed")

    write_config(home, {"server": {"listen": f"127.0.0.1:{port}"},
                        "models": {"default": {"endpoints": ["mock:echo"]}, "extra": {"endpoints": ["mock:two"]}}})
    tty.child.send("r")
    tty.wait_screen(lambda s: "configuration reloaded: 2 route(s)" in s[-1], "the reload result")
    tty.wait_screen(lambda s: any("|extra       priority mock:two" in line for line in s[2:4]), "the new alias")
    (home / "bitrouter.yaml").write_text("models: [unclosed\n")
    tty.child.send("r")
    # The cause comes first, without the config path, so an 80-column footer still shows it.
    tty.wait_screen(lambda s: s[-1].startswith(" reload failed: invalid YAML (line 2)"), "the failure")
    assert chat(url, "extra").status_code == 200

    tty.rows = 40
    tty.child.setwinsize(40, 120)
    tty.wait_screen(lambda s: s[37].startswith("Since start: 32 requests") and "http://" in s[0],
                    "the 120x40 redraw")
    tty.child.send("q")
    assert tty.wait_exit() == 0
    assert restored(tty.raw)


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_signals_quit_like_q_and_restore_the_terminal(home, how):
    port = free_port()
    write_config(home, {**MOCK, "server": {"listen": f"127.0.0.1:{port}"}})
    tty = Tty(home)
    tty.wait_screen(lambda s: "in-process" in s[0], "the header")
    if how == "SIGTERM":
        tty.child.kill(signal.SIGTERM)
    else:
        tty.child.send("\x03")
    assert tty.wait_exit() == 0
    assert restored(tty.raw)


def test_attaches_when_a_server_already_holds_the_port(home, start_server):
    server = start_server(MOCK)
    env = clean_env(home)
    del env["NO_COLOR"]
    tty = Tty(home, env=env, cols=100)
    tty.wait_screen(lambda s: f"attached to pid {server.proc.pid}" in s[0], "the attached header")
    assert "is taken by a running BitRouter" in tty.screen()[-1]
    assert chat(server.url, "nope-attached").status_code == 404
    tty.wait_screen(lambda s: any("nope-attached" in line for line in s), "the request over /admin/events")
    assert "\x1b[31m" in tty.raw  # colour when NO_COLOR is not set: the 404 row is red
    tty.child.send("r")
    tty.wait_screen(lambda s: "configuration reloaded" in s[-1], "POST /admin/reload's answer")
    tty.child.send("q")
    assert tty.wait_exit() == 0
    assert requests.get(server.url + "/health", timeout=5).ok  # quitting left the server running

    tty = Tty(home, "tui")
    tty.wait_screen(lambda s: f"attached to pid {server.proc.pid}" in s[0], "`bitrouter tui`")
    assert any("nope-attached" in line for line in tty.log_rows())
    tty.child.send("q")
    assert tty.wait_exit() == 0


def test_attaching_signs_in_when_the_server_requires_tokens(home, start_server):
    assert run_cli(home, "account", "-g").returncode == 0  # a trusted issuer: tokens are now required
    server = start_server(MOCK)
    assert requests.get(server.url + "/admin/metrics", timeout=5).status_code == 401
    assert requests.get(server.url + "/admin/events", timeout=5).status_code == 401
    token = run_cli(home, "keygen", "--exp", "5m").stdout.strip().splitlines()[-1]
    tty = Tty(home, "tui")
    tty.wait_screen(lambda s: f"attached to pid {server.proc.pid}" in s[0], "the attached header")
    assert "auth: tokens" in tty.screen()[0]
    assert chat(server.url, "default", headers={"authorization": f"Bearer {token}"}).status_code == 200
    tty.wait_screen(lambda s: any("default -> mock:echo" in row for row in tty.log_rows()), "the request")
    tty.child.send("q")
    assert tty.wait_exit() == 0


def test_a_crash_still_restores_the_terminal(home):
    def broken(req):  # a "BitRouter" whose snapshot lacks the fields the screen needs
        return Reply(body={"pid": 1, "providers": [{"name": "half"}], "routes": [], "recent": []})
    with FakeUpstream(broken) as fake:
        tty = Tty(home, "tui", "--url", fake.url)
        assert tty.wait_exit() == 1
    assert restored(tty.raw)
    after = tty.raw.rsplit(EXIT_FULLSCREEN, 1)[1]
    assert "Traceback" in after and "KeyError" in after  # shown on the normal screen, after the restore


def test_tui_without_a_server_says_so(home):
    port = free_port()
    write_config(home, {**MOCK, "server": {"listen": f"127.0.0.1:{port}"}})
    tty = Tty(home, "tui")
    assert tty.wait_exit() == 1
    assert f"error: no BitRouter server answers at http://127.0.0.1:{port}" in tty.raw


def test_first_run_offers_setup_and_a_cancel_leads_to_the_empty_dashboard(home):
    port = free_port()
    config = f"server:\n  listen: 127.0.0.1:{port}\n"
    (home / "bitrouter.yaml").write_text(config)
    tty = Tty(home)
    tty.wait_output("Providers to set up")
    tty.child.send("\x03")
    tty.wait_screen(lambda s: "in-process" in s[0], "the dashboard after the wizard")
    assert "(none yet: run `bitrouter --home-dir " in tty.screen()[2]  # cut to the pane, as printed
    tty.child.send("q")
    assert tty.wait_exit() == 0
    assert (home / "bitrouter.yaml").read_text() == config


def test_bare_bitrouter_listens_where_told(home):
    write_config(home, {"models": {"echo": {"endpoints": ["mock:echo"]}}})
    port = free_port()
    tty = Tty(home, "--listen", f"127.0.0.1:{port}")
    tty.wait_screen(lambda s: f"127.0.0.1:{port}  in-process" in s[0], "the header with the chosen port")
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).ok
    tty.child.send("q")
    assert tty.wait_exit() == 0


def test_an_attached_server_going_away_reads_plainly(home, start_server):
    server = start_server(MOCK)
    tty = Tty(home, "tui", cols=120)
    tty.wait_screen(lambda s: f"attached to pid {server.proc.pid}" in s[0], "the attached header")
    server.stop()
    tty.wait_screen(lambda s: "(unreachable: connection refused (has the server stopped?))" in s[0],
                    "the plain cause in the header")
    assert "HTTPConnectionPool" not in tty.raw and "Max retries" not in tty.raw
    tty.child.send("q")
    assert tty.wait_exit() == 0


@pytest.mark.parametrize("micro, shown", [(0, "$0"), (30, "$0.00003"), (4567, "$0.0046"), (100, "$0.0001"),
                                          (12_344_567, "$12.34")])
def test_small_costs_never_read_as_zero(micro, shown):
    assert tui._usd(micro) == shown
