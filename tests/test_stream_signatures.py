"""Thinking signatures survive streamed translation, so a later turn can hand them back.

As in the server, each proof the upstream decoder makes is sealed with its producer's
label before the client sees it, and a later turn hands that producer only its own.
"""

import json

from bitrouter.protocols import Request, anthropic, google, own_proofs, proof, responses, seal, sse, unseal

SIG = "EqQBCkYIBxgCKkA-signed-by-anthropic"
PRODUCER = "up-anthropic:claude-sonnet-4-5"  # an endpoint label, as the server seals with
OTHER = "up-other:claude-sonnet-4-5"
NATIVE = proof("anthropic", block={"type": "thinking", "thinking": "let me think", "signature": SIG})


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


def translate(upstream, inbound, raw: bytes, producer: str = PRODUCER) -> list[dict]:
    """Run an upstream stream through the unified events into an inbound stream; parsed frames out."""
    parser, decoder = sse.Parser(), upstream.StreamDecoder()
    encoder = inbound.StreamEncoder("m", Request(model="m", messages=[]))
    out = b""
    for event, data in parser.feed(raw):
        for ev in decoder.feed(event, data):
            ev.signature = seal(ev.signature, producer)
            out += encoder.event(ev)
    out += encoder.finish_stream()
    return [json.loads(data) for _, data in sse.Parser().feed(out) if data != "[DONE]"]


def test_anthropic_signature_reaches_a_responses_client_and_comes_back():
    frames = translate(anthropic, responses, anthropic_thinking_stream())
    done = [f["item"] for f in frames if f["type"] == "response.output_item.done" and f["item"]["type"] == "reasoning"]
    assert unseal(done[0]["encrypted_content"]) == (PRODUCER, NATIVE)
    # the client's next turn replays the reasoning item; Anthropic gets signed thinking back
    turn = responses.decode_request({"model": "m", "input": [
        {"role": "user", "content": "q"}, done[0],
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
        {"role": "user", "content": "again"}]})

    def thinking_sent_to(producer):
        sent = anthropic.encode_request(own_proofs(turn, producer), "claude-sonnet-4-5")
        return [b for m in sent["messages"] for b in m["content"] if b["type"] in ("thinking", "redacted_thinking")]
    assert thinking_sent_to(PRODUCER) == [{"type": "thinking", "thinking": "let me think", "signature": SIG}]
    assert thinking_sent_to(OTHER) == []  # another endpoint would refuse the signature


def test_anthropic_signature_passes_through_an_anthropic_encoder():
    frames = translate(anthropic, anthropic, anthropic_thinking_stream())
    deltas = [f["delta"] for f in frames if f["type"] == "content_block_delta"]
    assert [d["type"] for d in deltas] == ["thinking_delta", "signature_delta", "text_delta"]
    assert deltas[0]["thinking"] == "let me think"
    assert unseal(deltas[1]["signature"]) == (PRODUCER, NATIVE)
    # Claude Code sends the thinking block back as it got it; its producer gets the original again
    turn = anthropic.decode_request({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "let me think",
                                           "signature": deltas[1]["signature"]}, {"type": "text", "text": "done"}]},
        {"role": "user", "content": "again"}]})
    sent = anthropic.encode_request(own_proofs(turn, PRODUCER), "claude-sonnet-4-5")
    assert sent["messages"][1]["content"][0] == {"type": "thinking", "thinking": "let me think", "signature": SIG}


def test_gemini_thought_signature_reaches_a_gemini_client():
    chunk = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "hmm", "thought": True, "thoughtSignature": "g-sig"}, {"text": "ok"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}}
    producer = "up-google:gemini-2.5-pro"
    frames = translate(google, google, sse.frame(chunk), producer)
    parts = [p for f in frames for c in f.get("candidates", []) for p in c["content"]["parts"]]
    signed = [p for p in parts if "thoughtSignature" in p]
    assert {"text": "hmm", "thought": True} in parts and {"text": "ok"} in parts
    assert len(signed) == 1 and unseal(signed[0]["thoughtSignature"]) == (producer, proof("google", signature="g-sig"))
    # Gemini CLI drops the thought parts from its history but keeps the signed part: Gemini gets "g-sig" back
    history = [p for p in parts if not p.get("thought")]
    turn = google.decode_request({"contents": [{"role": "user", "parts": [{"text": "q"}]},
                                               {"role": "model", "parts": history},
                                               {"role": "user", "parts": [{"text": "again"}]}]})
    sent = google.encode_request(own_proofs(turn, producer), "gemini-2.5-pro")["contents"][1]
    assert sent == {"role": "model", "parts": [{"text": "ok", "thoughtSignature": "g-sig"}]}
    assert google.encode_request(own_proofs(turn, "up-other:gemini"), "gemini-2.5-pro")["contents"][1] == \
        {"role": "model", "parts": [{"text": "ok"}]}  # another endpoint's signature is not replayed
