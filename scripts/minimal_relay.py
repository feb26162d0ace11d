"""The ceiling of BitRouter's stack: a relay with nothing in it but the stack itself.

`python scripts/minimal_relay.py PORT UPSTREAM_URL [urllib3|bitrouter]` relays every POST
to the same path of UPSTREAM_URL, on 127.0.0.1:PORT: bottle on gevent's WSGI server,
TCP_NODELAY on client sockets, the request body parsed and re-serialised, the upstream
reply parsed (and relayed), an SSE reply relayed chunk by chunk. The upstream call is one
urllib3 pool (the stack as issue 13 set it), or with `bitrouter` BitRouter's own upstream
client (bitrouter/upstream.py): against that relay, what is left is BitRouter's pipeline.
`make bench` measures BitRouter against both.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import bottle  # noqa: E402
import urllib3  # noqa: E402
from gevent.pywsgi import WSGIHandler, WSGIServer  # noqa: E402

PORT, UPSTREAM = int(sys.argv[1]), sys.argv[2].rstrip("/")
CLIENT = sys.argv[3] if len(sys.argv) > 3 else "urllib3"
HEADERS = {"content-type": "application/json"}
app = bottle.Bottle()


def urllib3_client():
    """(send, stream) over one urllib3 pool."""
    pool = urllib3.PoolManager(maxsize=64, block=False, retries=False).connection_from_url(UPSTREAM)

    def send(path, body):
        return pool.urlopen("POST", path, body=body, headers=HEADERS, preload_content=False)
    return send, lambda reply: reply.stream(65536, decode_content=False)


def bitrouter_client():
    """(send, stream) over BitRouter's upstream.Pools."""
    from bitrouter.upstream import Pools

    pools = Pools()
    return (lambda path, body: pools.send(UPSTREAM + path, HEADERS, body)), lambda reply: reply.chunks()


send, stream = {"urllib3": urllib3_client, "bitrouter": bitrouter_client}[CLIENT]()


@app.post("<path:path>")
def chat(path):
    body = json.loads(bottle.request.body.read())
    body["model"] = "m"
    reply = send(path, json.dumps(body).encode())
    bottle.response.status = reply.status
    if reply.headers.get("content-type", "").startswith("text/event-stream"):
        bottle.response.content_type = "text/event-stream"
        return stream(reply)
    data = reply.read()
    json.loads(data)  # a gateway reads the reply (usage, errors); this one only parses it
    bottle.response.content_type = "application/json"
    return data


class Handler(WSGIHandler):
    def __init__(self, sock, *args, **kwargs):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, *args, **kwargs)


if __name__ == "__main__":
    WSGIServer(("127.0.0.1", PORT), app, handler_class=Handler, log=None, backlog=1024).serve_forever()
