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


def call_urllib3():
    pool = urllib3.PoolManager(maxsize=64, block=False, retries=False).connection_from_url(UPSTREAM)

    def call(path, body):
        reply = pool.urlopen("POST", path, body=body, headers=HEADERS, preload_content=False)
        return reply.status, reply.headers.get("content-type", ""), reply.stream(65536, decode_content=False), reply.read
    return call


def call_bitrouter():
    from bitrouter.upstream import Pools

    pools = Pools()

    def call(path, body):
        reply = pools.send(UPSTREAM + path, HEADERS, body)
        return reply.status, reply.headers.get("content-type", ""), reply.chunks(), reply.read
    return call


call = {"urllib3": call_urllib3, "bitrouter": call_bitrouter}[CLIENT]()


@app.post("<path:path>")
def chat(path):
    body = json.loads(bottle.request.body.read())
    body["model"] = "m"
    status, content_type, chunks, read = call(path, json.dumps(body).encode())
    bottle.response.status = status
    if content_type.startswith("text/event-stream"):
        bottle.response.content_type = "text/event-stream"
        return chunks
    data = read()
    json.loads(data)  # a gateway reads the reply (usage, errors); this one only parses it
    bottle.response.content_type = "application/json"
    return data


class Handler(WSGIHandler):
    def __init__(self, sock, *args, **kwargs):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, *args, **kwargs)


if __name__ == "__main__":
    WSGIServer(("127.0.0.1", PORT), app, handler_class=Handler, log=None, backlog=1024).serve_forever()
