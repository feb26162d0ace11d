"""Server-sent events: an incremental parser and a frame writer."""

import json


class Parser:
    """Turn arbitrary byte chunks into (event, data) pairs as each blank line completes one."""

    def __init__(self):
        self._buffer = b""
        self._event = ""
        self._data = []
        self._raw = []  # the bytes of the frame being read, as they arrived

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """Consume bytes; return the events completed by them."""
        return [(event, data) for _, event, data in self.frames(chunk) if data is not None]

    def frames(self, chunk: bytes) -> list[tuple[bytes, str, str | None]]:
        """Consume bytes; return each frame they complete as (its raw bytes, event, data).

        A frame of comments only (a keep-alive) has data None; relaying the raw bytes of
        whole frames means a client never sees half a frame.
        """
        self._buffer += chunk
        frames = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return frames
            end, skip = cut
            line = self._buffer[:end]
            self._raw.append(self._buffer[:end + skip])
            self._buffer = self._buffer[end + skip:]
            if not line:
                raw = b"".join(self._raw)
                data = "\n".join(self._data) if self._data or self._event else None
                frames.append((raw, self._event, data))
                self._event, self._data, self._raw = "", [], []
                continue
            name, _, value = line.decode("utf-8", "replace").partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value

    def close_frames(self) -> list[tuple[bytes, str, str | None]]:
        """The frames of a stream that ended without the blank line after its last frame."""
        frames = self.frames(b"\n\n") if self._buffer.strip() or self._data else []
        self._buffer, self._raw = b"", []
        return frames

    def close(self) -> list[tuple[str, str]]:
        """Flush a final event that the stream ended without a blank line."""
        events = self.feed(b"\n\n") if self._buffer.strip() or self._data else []
        self._buffer = b""
        return events


def frame(data, event: str = "") -> bytes:
    """One SSE frame; dicts are written as compact JSON."""
    if not isinstance(data, str):
        data = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


def _line_end(buffer: bytes):
    """Position and length of the first line terminator (\\r\\n, \\n or \\r), or None."""
    n = buffer.find(b"\n")
    r = buffer.find(b"\r")
    if r == -1 or (n != -1 and n < r):
        return (n, 1) if n != -1 else None
    if r == len(buffer) - 1:
        return None  # a \r at the end may be the first half of \r\n
    return (r, 2) if buffer[r + 1:r + 2] == b"\n" else (r, 1)
