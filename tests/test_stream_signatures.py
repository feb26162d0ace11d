"""Thinking signatures survive streamed translation, so a later turn can hand them back."""

import json

from bitrouter.protocols import Request, anthropic, google, responses, sse

SIG = "EqQBCkYIBxgCKkA-signed-by-anthropic"


def anthropic_thinking_stream() -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 3, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "let me think"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": SIG}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "done"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(sse.frame(data, name) for name, data in events)


def translate(upstream, inbound, raw: bytes) -> list[dict]:
    """Run an upstream stream through the unified events into an inbound stream; parsed frames out."""
    parser, decoder = sse.Parser(), upstream.StreamDecoder()
    encoder = inbound.StreamEncoder("m", Request(model="m", messages=[]))
    out = b""
    for event, data in parser.feed(raw):
        for ev in decoder.feed(event, data):
            out += encoder.event(ev)
    out += encoder.finish_stream()
    return [json.loads(data) for _, data in sse.Parser().feed(out) if data != "[DONE]"]


def test_anthropic_signature_reaches_a_responses_client_and_comes_back():
    frames = translate(anthropic, responses, anthropic_thinking_stream())
    done = [f["item"] for f in frames if f["type"] == "response.output_item.done" and f["item"]["type"] == "reasoning"]
    assert done[0]["encrypted_content"] == SIG
    # the client's next turn replays the reasoning item; Anthropic gets signed thinking back
    turn = responses.decode_request({"model": "m", "input": [
        {"role": "user", "content": "q"}, done[0],
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
        {"role": "user", "content": "again"}]})
    sent = anthropic.encode_request(turn, "claude-sonnet-4-5")
    thinking = [b for m in sent["messages"] for b in m["content"] if isinstance(b, dict) and b["type"] == "thinking"]
    assert thinking == [{"type": "thinking", "thinking": "let me think", "signature": SIG}]


def test_anthropic_signature_passes_through_an_anthropic_encoder():
    frames = translate(anthropic, anthropic, anthropic_thinking_stream())
    deltas = [f["delta"] for f in frames if f["type"] == "content_block_delta"]
    assert {"type": "signature_delta", "signature": SIG} in deltas


def test_gemini_thought_signature_reaches_a_gemini_client():
    chunk = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "hmm", "thought": True, "thoughtSignature": "g-sig"}, {"text": "ok"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}}
    frames = translate(google, google, sse.frame(chunk))
    parts = [p for f in frames for c in f.get("candidates", []) for p in c["content"]["parts"]]
    assert {"text": "hmm", "thought": True, "thoughtSignature": "g-sig"} in parts
