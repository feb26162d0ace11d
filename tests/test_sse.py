"""The SSE parser: events survive any chunking and every line-ending style."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _reference_frames(stream: bytes) -> list:
    """Frames as the SSE spec splits them: lines end at \\r\\n, \\r or \\n; a blank line ends a frame."""
    frames, raw, event, data = [], b"", "", []
    for line, end in re.findall(rb"([^\r\n]*)(\r\n|\r|\n)", stream):
        raw += line + end
        if not line:
            frames.append((raw, event, "\n".join(data)))
            raw, event, data = b"", "", []
            continue
        name, _, value = line.decode().partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    return frames


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.tuples(st.sampled_from(["", "data: a", "data:b", "event: e", ": c", "id: 1", "data: {\"k\":1}"]),
                                st.sampled_from(["\n", "\n", "\n", "\r\n", "\r"])), max_size=30),
       cuts=st.lists(st.integers(min_value=1, max_value=12), max_size=40))
def test_frames_match_the_spec_for_any_line_ends_and_chunking(lines, cuts):
    stream = b"".join(text.encode() + end.encode() for text, end in lines)
    if stream.endswith(b"\r"):
        stream += b"\n"  # a final lone \r may still become \r\n: the parser waits, as it should
    parser, got, at = sse.Parser(), [], 0
    for size in cuts + [len(stream)]:
        got += parser.frames(stream[at:at + size])
        at += size
    assert got == _reference_frames(stream)
