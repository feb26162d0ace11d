"""The SSE parser: events survive any chunking and every line-ending style."""

import pytest

from bitrouter.protocols import sse

STREAM = (b": comment\n"
          b"event: message_start\ndata: {\"a\":1}\n\n"
          b"data: line one\ndata: line two\n\n"
          b"data:no-space\r\n\r\n"
          b"event: x\rdata: cr only\r\r"
          b"data: [DONE]\n\n")
EXPECTED = [("message_start", '{"a":1}'), ("", "line one\nline two"), ("", "no-space"),
            ("x", "cr only"), ("", "[DONE]")]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_any_chunking_gives_the_same_events(size):
    parser = sse.Parser()
    events = []
    for i in range(0, len(STREAM), size):
        events += parser.feed(STREAM[i:i + size])
    assert events + parser.close() == EXPECTED


def test_a_final_event_without_blank_line_is_flushed_on_close():
    parser = sse.Parser()
    assert parser.feed(b"data: tail") == []
    assert parser.close() == [("", "tail")]


def test_frame_writes_compact_json_with_optional_event():
    assert sse.frame({"k": "v"}) == b'data: {"k":"v"}\n\n'
    assert sse.frame("[DONE]", "done") == b"event: done\ndata: [DONE]\n\n"
