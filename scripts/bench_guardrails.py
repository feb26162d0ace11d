"""What the guardrails cost: the scan of a 10 KB prompt, the stream guard, and both through a server.

In process: one upgoing walk of a Chat body holding a 10 KB prompt seen for the first time
(source code, or prose), with every built-in pattern on in that direction and with the
defaults; a long agent conversation first seen and then re-sent; the stream guard per frame. Through BitRouter: scripts/bench.py's stack (guardrails on, the default)
against a second one with `guardrails: {enabled: false}`, requests alternating: the time to
first byte of a stream and a non-streamed request with the 10 KB prompt.

`python scripts/bench_guardrails.py` prints one JSON object; `run(stack=None) -> dict` is the
same measurement for scripts/bench.py to fold in.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench  # noqa: E402  (patches gevent on import, as this script needs too)

from bitrouter import guardrails, protocols  # noqa: E402

TARGET_MS = 0.1
ROOT = Path(__file__).resolve().parent.parent
PROMPTS = {"code": (ROOT / "bitrouter" / "server.py").read_text()[:10240],
           "prose": ((ROOT / "docs" / "routing.md").read_text() * 20)[:10240]}
EVERY = {"upgoing": {name: "warn" for name in guardrails.BUILTIN}}


def run(stack=None, n: int = 1000) -> dict:
    """In-process costs, then the same stack with guardrails on and off."""
    if stack is None:
        with bench.Stack() as own:
            return run(own, n)
    report = {"prompt_kb": 10, "target_ms": TARGET_MS}
    for label, raw in (("every_builtin", EVERY), ("defaults", {})):
        policy = guardrails.compile_policy(raw, _fail, ["sk-bench-own-provider-key-0001"])
        for kind, prompt in PROMPTS.items():
            report[f"scan_{kind}_{label}_p50_ms"] = _walk_ms(policy, prompt)
    report["within_target"] = max(v for k, v in report.items() if k.startswith("scan_")) < TARGET_MS
    report.update(_history_ms())
    report["stream_guard_us_per_frame"] = _stream_us()
    with bench.Stack({"guardrails": {"enabled": False}}) as off:
        report.update(_through(stack, off, n))
    return report


def _walk_ms(policy, prompt: str, rounds: int = 500) -> float:
    """A prompt seen for the first time: the memo of texts seen before is emptied each round."""
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}]}
    times = []
    for _ in range(rounds):
        policy.memo.clear()
        started = time.perf_counter()
        policy.walk(body, protocols.get("openai").text_fields["request"], guardrails.UPGOING, [])
        times.append((time.perf_counter() - started) * 1000)
    return bench.pct(sorted(times), 50)


def _history_ms(rounds: int = 30) -> dict:
    """A Claude-Code-sized conversation (about 220 KB, 200 turns): first sight, then re-sent."""
    messages = [{"role": "user", "content": "fix the failing tests " * 50}]
    for i in range(100):
        messages += [{"role": "assistant", "content": [
                         {"type": "text", "text": f"Let me look at step {i}. " * 20},
                         {"type": "tool_use", "id": f"toolu_{i}", "name": "Bash", "input": {"command": f"ls {i}"}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}",
                                                   "content": PROMPTS["code"][:1500]}]}]
    raw = json.dumps({"model": "bench", "system": PROMPTS["prose"], "messages": messages})
    policy = guardrails.compile_policy({}, _fail, ["sk-bench-own-provider-key-0001"])
    first, again = [], []
    for _ in range(rounds):
        policy.memo.clear()
        for times in (first, again):
            body = json.loads(raw)  # fresh string objects, as every request has
            started = time.perf_counter()
            policy.walk(body, protocols.get("anthropic").text_fields["request"], guardrails.UPGOING, [])
            times.append((time.perf_counter() - started) * 1000)
    return {"history_kb": len(raw) // 1024, "history_first_p50_ms": bench.pct(sorted(first), 50),
            "history_resent_p50_ms": bench.pct(sorted(again), 50)}


def _stream_us(frames: int = 2000) -> float:
    """Microseconds per text frame through a StreamGuard with the default downgoing rules."""
    policy = guardrails.compile_policy({}, _fail, ["sk-bench-own-provider-key-0001"])
    fields = protocols.get("openai").text_fields["stream"]
    guard = policy.stream_guard(fields, lambda status, message: b"", lambda hits: None)
    frame = b'data: {"choices":[{"index":0,"delta":{"content":"word "}}]}\n\n'
    started = time.perf_counter()
    for _ in range(frames):
        guard.feed(frame)
    guard.close()
    return round((time.perf_counter() - started) / frames * 1e6, 2)


def _through(on, off, n: int) -> dict:
    stream = dict(bench.REQUEST, stream=True)
    big = {"model": "bench", "messages": [{"role": "user", "content": PROMPTS["code"]}]}
    ttfb, plain = {"on": [], "off": []}, {"on": [], "off": []}
    clients = {"on": bench.Client(on.proxy), "off": bench.Client(off.proxy)}
    for round_ in range(100 + n):  # the first 100 rounds warm up connections and code paths
        for name, client in clients.items():
            first = client.ttfb_many(on.proxy.path, stream, 1)[0]
            started = time.perf_counter()
            client.post(on.proxy.path, big)
            if round_ >= 100:
                ttfb[name].append(first)
                plain[name].append((time.perf_counter() - started) * 1000)
    for client in clients.values():
        client.close()
    p50 = {f"{kind}_{name}": bench.pct(sorted(times[name]), 50)
           for kind, times in (("ttfb", ttfb), ("plain10kb", plain)) for name in ("on", "off")}
    return {"stream_ttfb_added_p50_ms": round(p50["ttfb_on"] - p50["ttfb_off"], 3),
            "plain_10kb_added_p50_ms": round(p50["plain10kb_on"] - p50["plain10kb_off"], 3),
            **{f"{k}_p50_ms": v for k, v in p50.items()}}


def _fail(where, message):
    raise SystemExit(f"{where}: {message}")


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
