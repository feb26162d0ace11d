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


def test_frames_come_whole_with_their_raw_bytes_and_partial_ones_wait():
    parser = sse.Parser()
    assert parser.frames(b": ping\n\nevent: a\ndata: 1\n\nevent: b\nda") == [
        (b": ping\n\n", "", ""), (b"event: a\ndata: 1\n\n", "a", "1")]
    assert parser.frames(b"ta: 2\r\n\r\n") == [(b"event: b\ndata: 2\r\n\r\n", "b", "2")]


def test_a_frame_over_the_limit_raises():
    parser = sse.Parser(max_frame=1000)
    parser.frames(b"data: " + b"x" * 900)
    with pytest.raises(sse.FrameTooLarge):
        parser.frames(b"x" * 200)


@pytest.mark.timeout(20)
def test_one_endless_line_in_small_chunks_is_parsed_in_linear_time():
    # 16 MB in 4 KB chunks: rescanning the buffer on every chunk would copy ~32 GB.
    parser, chunk = sse.Parser(), b"x" * 4096
    parser.feed(b"data: ")
    for _ in range(4096):
        assert parser.feed(chunk) == []
    assert parser.feed(b"\n\n") == [("", "x" * 4096 * 4096)]
