"""What cross-protocol translation costs: Anthropic client -> OpenAI upstream, streaming.

Compared with the same stream passed through (OpenAI client -> OpenAI upstream) on the
same BitRouter and the same canned upstream (scripts/bench.py's stack). Requests of the
kinds alternate so drift hits all alike. A second, in-process measurement times the
translation code alone (decode, encode, re-encode the stream) without any network.

`python scripts/bench_protocols.py` prints one JSON object; `run(stack=None) -> dict` is
the same measurement for scripts/bench.py to fold in (pass its running Stack to reuse it).
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench  # noqa: E402  (patches gevent on import, as this script needs too)

from bitrouter.protocols import anthropic, chat, sse  # noqa: E402

TARGET_MS = 0.5
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "hello"}], "stream": True}
ANTHROPIC = {"model": "bench", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}],
             "stream": True}
RESPONSES = {"model": "bench", "input": "hello", "stream": True}


def run(stack=None, n: int = 1000) -> dict:
    """Added p50/p99 per streamed request for translation over pass-through, plus CPU-only cost.

    The headline case is Anthropic client -> OpenAI upstream; Responses client (Codex)
    -> OpenAI upstream is reported alongside.
    """
    if stack is None:
        with bench.Stack() as own:
            return run(own, n)
    cases = {name: (bench.Client(stack.proxy), path, body, []) for name, path, body in
             (("passthrough", "/v1/chat/completions", CHAT), ("anthropic", "/v1/messages", ANTHROPIC),
              ("responses", "/v1/responses", RESPONSES))}
    for round_ in range(100 + n):  # the first 100 rounds warm up connections and code paths
        for client, path, body, times in cases.values():
            started = time.perf_counter()
            client.post(path, body)
            if round_ >= 100:
                times.append((time.perf_counter() - started) * 1000)
    p50, p99 = {}, {}
    for name, (client, _, _, times) in cases.items():
        client.close()
        times.sort()
        p50[name], p99[name] = bench.pct(times, 50), bench.pct(times, 99)
    added = round(p50["anthropic"] - p50["passthrough"], 3)
    cpu = sorted(_translation_cpu() for _ in range(2000))
    return {"requests_each": n,
            "passthrough_stream_p50_ms": p50["passthrough"],
            "translated_stream_p50_ms": p50["anthropic"],
            "added_p50_ms": added,
            "added_p99_ms": round(p99["anthropic"] - p99["passthrough"], 3),
            "translation_cpu_p50_ms": bench.pct(cpu, 50),
            "responses_client_added_p50_ms": round(p50["responses"] - p50["passthrough"], 3),
            "target_added_p50_ms": TARGET_MS, "within_target": added < TARGET_MS}


def _translation_cpu() -> float:
    """One request's translation work in this process: the same steps the server runs."""
    started = time.perf_counter()
    req = anthropic.decode_request(json.loads(json.dumps(ANTHROPIC)))
    json.dumps(chat.encode_request(req, "m"))
    parser, decoder = sse.Parser(), chat.StreamDecoder()
    encoder = anthropic.StreamEncoder("bench", req)
    for chunk in bench.STREAM_FRAMES:
        for event, data in parser.feed(chunk):
            for ev in decoder.feed(event, data):
                encoder.event(ev)
    encoder.finish_stream()
    return (time.perf_counter() - started) * 1000


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
