"""The upstream client against a scripted server on loopback: keep-alive, stale connections,
compressed and cut-short replies, header reading (bitrouter/upstream.py)."""

import gzip
import json
import socket
import ssl
import subprocess
import threading
import zlib

import pytest

from bitrouter import upstream
from conftest import wait_until

OK = b'{"ok": true}'


class ScriptedServer:
    """A TCP server on 127.0.0.1 whose n-th connection is served by script(n, connection)."""

    def __init__(self, script, tls: ssl.SSLContext | None = None):
        self.script = script
        self.tls = tls
        self.accepted = 0
        self.requests = []  # (connection number, request line) in the order they arrived
        self.closed = threading.Event()  # set each time the server closes a connection
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http{'s' if tls else ''}://127.0.0.1:{self.listener.getsockname()[1]}/v1/chat/completions"
        threading.Thread(target=self._accept, daemon=True).start()

    def read_request(self, conn, number: int) -> bool:
        """Read one request (headers and Content-Length body); False at end of file."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append((number, head.split(b"\r\n", 1)[0]))
        return True

    def close(self) -> None:
        self.listener.close()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(self.accepted, conn), daemon=True).start()

    def _serve(self, number, conn):
        try:
            if self.tls:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.script(self, number, conn)
        except ssl.SSLError:  # a client that refused the certificate
            pass
        finally:
            conn.close()
            self.closed.set()


def reply(body: bytes = OK, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in ("HTTP/1.1 200 OK", "Content-Type: application/json",
                                        f"Content-Length: {len(body)}", *headers))
    return head.encode() + b"\r\n" + body


def keep_alive(server, number, conn):
    while server.read_request(conn, number):
        conn.sendall(reply())


def first_then_keep_alive(first):
    """A script serving the first connection by first(server, connection), every later one by keep_alive."""
    def script(server, number, conn):
        if number > 1:
            return keep_alive(server, number, conn)
        return first(server, conn)
    return script


@pytest.fixture
def pools():
    pools = upstream.Pools(connect_timeout=2, read_timeout=5)
    yield pools
    pools.close()


def call(pools, server) -> bytes:
    return pools.send(server.url, {"content-type": "application/json"}, b"{}").read()


def test_one_connection_serves_call_after_call(pools):
    server = ScriptedServer(keep_alive)
    assert [call(pools, server) for _ in range(5)] == [OK] * 5
    assert server.accepted == 1 and len(server.requests) == 5
    server.close()


def test_a_body_larger_than_the_socket_buffer_arrives_whole(pools):
    def echo_size(server, number, conn):
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += conn.recv(1 << 20)
        conn.sendall(reply(json.dumps({"size": len(body), "tail": body[-8:].decode()}).encode()))

    server = ScriptedServer(echo_size)
    body = b"x" * (16 << 20) + b"12345678"  # the first send takes what fits, sendall the rest
    answer = pools.send(server.url, {"content-type": "application/json"}, body).read()
    assert json.loads(answer) == {"size": len(body), "tail": "12345678"}
    server.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_before_use(pools):
    def once(server, number, conn):
        if server.read_request(conn, number):
            conn.sendall(reply())  # keep-alive by its headers, then closed all the same

    server = ScriptedServer(once)
    assert call(pools, server) == OK
    wait_until(server.closed.is_set, what="the server to close the idle connection")
    assert call(pools, server) == OK
    assert server.accepted == 2 and [n for n, _ in server.requests] == [1, 2]
    server.close()


def test_a_reused_connection_closed_as_the_request_went_out_is_replaced_once(pools):
    def drop_second(server, conn):
        server.read_request(conn, 1)
        conn.sendall(reply())
        server.read_request(conn, 1)  # read, then closed without an answer

    server = ScriptedServer(first_then_keep_alive(drop_second))
    assert call(pools, server) == OK
    assert call(pools, server) == OK
    assert [n for n, _ in server.requests] == [1, 1, 2]
    server.close()


def test_a_new_connection_closed_without_an_answer_is_an_upstream_error(pools):
    server = ScriptedServer(lambda server, number, conn: server.read_request(conn, number))
    with pytest.raises(upstream.UpstreamError, match="closed the connection") as failed:
        call(pools, server)
    assert failed.value.kind == "connect" and failed.value.retryable
    assert server.accepted == 1  # a fresh connection is not tried again
    server.close()


def test_a_reply_cut_short_is_a_read_failure_and_its_connection_is_not_reused(pools):
    def cut(server, conn):
        server.read_request(conn, 1)
        conn.sendall(reply(b'{"ok": true, "long": "' + b"x" * 100 + b'"}')[:-50])

    server = ScriptedServer(first_then_keep_alive(cut))
    with pytest.raises(upstream.UpstreamError, match="upstream read failed"):
        call(pools, server)
    assert call(pools, server) == OK and server.accepted == 2
    server.close()


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_reply_is_decoded(pools, coding):
    body = json.dumps({"text": "hello " * 200}).encode()
    packed = gzip.compress(body) if coding == "gzip" else zlib.compress(body)

    def compressed(server, number, conn):
        while server.read_request(conn, number):
            conn.sendall(reply(packed, f"Content-Encoding: {coding}"))

    server = ScriptedServer(compressed)
    assert call(pools, server) == body
    assert b"".join(pools.send(server.url, {}, b"{}").chunks()) == body
    assert server.accepted == 1
    server.close()


def test_a_compressed_reply_is_held_to_the_limit_once_decoded(pools):
    packed = gzip.compress(b" " * 100_000)
    server = ScriptedServer(lambda server, number, conn: server.read_request(conn, number)
                            and conn.sendall(reply(packed, "Content-Encoding: gzip")))
    with pytest.raises(upstream.UpstreamError, match="larger than the limit of 1000 bytes"):
        pools.send(server.url, {}, b"{}").read(limit=1000)
    server.close()


def test_a_chunked_stream_is_read_as_it_comes_and_its_connection_kept(pools):
    frames = [b"data: one\n\n", b"data: two\n\n"]

    def chunked(server, number, conn):
        while server.read_request(conn, number):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for frame in frames:
                conn.sendall(b"%x\r\n%s\r\n" % (len(frame), frame))
            conn.sendall(b"0\r\n\r\n")

    server = ScriptedServer(chunked)
    for _ in range(2):
        got = pools.send(server.url, {}, b"{}")
        assert got.headers["content-type"] == "text/event-stream"
        assert b"".join(got.chunks()) == b"".join(frames)
    assert server.accepted == 1
    server.close()


def test_headers_are_read_by_lower_case_name_with_repeats_joined(pools):
    server = ScriptedServer(lambda server, number, conn: server.read_request(conn, number) and conn.sendall(
        reply(OK, "X-Thing: a", "x-thing: b", "Retry-After: 7", "X-Folded: one", "  two")))
    got = pools.send(server.url, {}, b"{}")
    assert (got.headers["x-thing"], got.headers["retry-after"], got.headers["x-folded"]) == ("a, b", "7", "one two")
    assert got.read() == OK
    server.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem), made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", folder / "key.pem", "-out", folder / "cert.pem"],
                   check=True, capture_output=True)
    return folder


def tls_server(certificate, script=keep_alive) -> ScriptedServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    return ScriptedServer(script, tls=context)


def test_an_https_upstream_is_verified_against_the_trusted_certificates_and_kept_alive(certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate / "cert.pem"))  # what OpenSSL trusts by default
    server, pools = tls_server(certificate), upstream.Pools(connect_timeout=2, read_timeout=5)
    assert [call(pools, server) for _ in range(3)] == [OK] * 3
    assert server.accepted == 1
    pools.close()
    server.close()


def test_an_https_upstream_whose_certificate_is_not_trusted_is_refused(certificate, pools):
    server = tls_server(certificate)
    with pytest.raises(upstream.UpstreamError, match="cannot connect to 127.0.0.1: .*certificate verify failed"):
        call(pools, server)
    assert server.requests == []
    server.close()


def test_a_timeout_of_0_is_no_timeout(pools):
    pools.set_timeouts(0, 0)
    server = ScriptedServer(keep_alive)
    assert call(pools, server) == OK
    server.close()
