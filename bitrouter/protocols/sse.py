"""Server-sent events: an incremental parser and a frame writer."""

import json

CONTENT_TYPE = "text/event-stream"


class FrameTooLarge(ValueError):
    """An SSE frame (or a line without an end) grew past the parser's limit."""


class Parser:
    """Turn arbitrary byte chunks into whole frames as each blank line completes one.

    Every byte is scanned once, however the chunks split the lines, so one endless line
    costs linear time; `max_frame` (0: no limit) bounds the bytes held for one frame.
    """

    def __init__(self, max_frame: int = 0):
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._line = 0  # where the line being read starts in _buffer
        self._scan = 0  # how far that line has been searched for its end
        self._lf_scan = False  # _scan is how far _lf_frames searched for a blank line instead
        self._event = ""
        self._data = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """Consume bytes; return the (event, data) pairs completed by them."""
        return [(event, data) for _raw, event, data in self.frames(chunk) if event or data]

    def frames(self, chunk: bytes) -> list[tuple[bytes, str, str]]:
        """Consume bytes; return every frame they complete as (raw bytes, event, data).

        Frames with neither event nor data (keep-alive comments) are included, so a relay
        can pass them on; bytes of a frame still incomplete are held back.
        """
        buf = self._buffer
        buf += chunk
        if not self._line and not self._data and not self._event and b"\r" not in buf:
            return self._lf_frames(buf)
        if self._lf_scan:  # that search looked for blank lines only, not for every line end
            self._scan, self._lf_scan = 0, False
        done, start = [], 0  # start: where the frame being read begins
        while True:
            cut = _line_end(buf, self._scan)
            if cut is None:
                self._scan = max(self._line, len(buf) - 1)  # a trailing \r is looked at again
                break
            end, skip = cut
            line = bytes(buf[self._line:end])
            self._line = self._scan = end + skip
            if line:
                self._field(line)
                continue
            done.append((bytes(buf[start:self._line]), self._event, "\n".join(self._data)))
            start, self._event, self._data = self._line, "", []
        if start:
            del buf[:start]
            self._line -= start
            self._scan -= start
        if self.max_frame and len(buf) > self.max_frame and not done:  # whole frames first, then the error
            raise FrameTooLarge(f"upstream sent an SSE frame larger than {self.max_frame} bytes")
        return done

    def _lf_frames(self, buf: bytearray) -> list[tuple[bytes, str, str]]:
        """frames() for a buffer at a frame boundary with only \\n line ends: split on blank lines.

        _scan is where the next search for a blank line starts, so each byte is searched once.
        """
        done, start = [], 0
        while True:
            if buf[start:start + 1] == b"\n":  # a blank line on its own: an empty frame
                done.append((b"\n", "", ""))
                start += 1
                continue
            end = buf.find(b"\n\n", max(start, self._scan))
            if end < 0:
                break
            self._event, self._data = "", []
            raw = bytes(buf[start:end + 2])
            for line in raw.split(b"\n")[:-2]:  # the frame's lines, less the blank line that ends it
                self._field(line)
            done.append((raw, self._event, "\n".join(self._data)))
            start, self._scan, self._event, self._data = end + 2, 0, "", []
        if start:
            del buf[:start]
        self._scan, self._lf_scan = max(0, len(buf) - 1), True  # a \n at the end may be the first of two
        if self.max_frame and len(buf) > self.max_frame and not done:
            raise FrameTooLarge(f"upstream sent an SSE frame larger than {self.max_frame} bytes")
        return done

    def close(self) -> list[tuple[str, str]]:
        """Flush a final event that the stream ended without a blank line."""
        events = self.feed(b"\n\n") if bytes(self._buffer).strip() or self._data else []
        self._buffer = bytearray()
        self._line = self._scan = 0
        self._lf_scan = False
        return events

    def _field(self, line: bytes) -> None:
        name, _, value = line.decode("utf-8", "replace").partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value


def frame(data, event: str = "") -> bytes:
    """One SSE frame; dicts are written as compact JSON."""
    if not isinstance(data, str):
        data = _compact(data)
    if event:
        return f"event: {event}\ndata: {data}\n\n".encode()
    return f"data: {data}\n\n".encode()


# One encoder for every frame (json.dumps with options builds a new one per call).
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _line_end(buffer: bytearray, start: int):
    """Position and length of the first line terminator (\\r\\n, \\n or \\r) from start, or None."""
    n = buffer.find(b"\n", start)
    r = buffer.find(b"\r", start, len(buffer) if n == -1 else n)
    if r == -1:
        return (n, 1) if n != -1 else None
    if r == len(buffer) - 1:
        return None  # a \r at the end may be the first half of \r\n
    return (r, 2) if buffer[r + 1] == 0x0A else (r, 1)
