"""The admin API's newer surfaces as a hostile client meets them, against a
real `corral serve` with its TCP admin listener: custom domains, R2 objects
over REST, D1 exports and queries, queue messages and ``wrangler tail``'s
WebSocket. Every bad input gets a 4xx JSON error naming the problem, the
supervisor lives on and serves the next call, and stored data stays as it was.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any

import httpx
import pytest

from supervisor.observability.tail_sessions import client_frames
from tests.harness import refused, tcp_admin_client, with_tcp_admin

A = "/accounts/local"
OBJECTS = A + "/r2/buckets/{bucket}/objects/{key}"
#: Reads its R2 bucket at /r2/KEY, puts METADATA's objects at /metadata; anything
#: else logs ~160 kB (a big trace event for tails).
WORKER = '''from urllib.parse import unquote

from workers import Response, WorkerEntrypoint

METADATA = {"crlf": "text/plain\\r\\nx-injected: yes", "nul": "text/\\x00plain", "spaced": " text/plain\\t"}

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = unquote(request.url.split("/", 3)[3])
        if path.startswith("r2/"):
            found = await self.env.BUCKET.get(path[3:])
            return Response(await found.text() if found else "none", status=200 if found else 404)
        if path == "metadata":
            for key, value in METADATA.items():
                await self.env.BUCKET.put(key, key, httpMetadata={"contentType": value, "contentLanguage": value})
            return Response("put")
        for _ in range(10):
            print("x" * 16000)
        return Response("ok")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    corral = with_tcp_admin(tmp_path_factory.mktemp("hostile")).start()
    corral.deploy("plat", WORKER, namespace=None,
                  bindings=[{"type": "r2_bucket", "name": "BUCKET", "bucket_name": "objects"}])
    corral.route("plat.test/*", "plat")
    yield corral
    corral.stop()


@pytest.fixture(scope="module")
def tcp(server):
    with tcp_admin_client(server, "hostile") as client:
        yield client



def still_serving(server, tcp: httpx.Client | None = None) -> None:
    """The supervisor answers a normal call (on its TCP listener too, whose
    connections' failures would end it)."""
    assert server.alive(), server.log()
    assert server.admin("GET", f"{A}/workers/domains").status == 200
    if tcp is not None:
        assert tcp.get(f"/client/v4{A}/workers/domains").status_code == 200


# -- custom domains --------------------------------------------------------------


@pytest.mark.parametrize(("body", "words"), [
    (b"[]", ("Expected `object`",)),
    ({"hostname": 5, "service": "plat"}, ("$.hostname",)),
    ({"hostname": "a..b", "service": "plat"}, ("is not a host name",)),
    ({"hostname": "*.example.com", "service": "plat"}, ("wildcard",)),
    ({"hostname": "h.example.com", "service": "plat", "zone_name": "other.com"}, ("is not in zone 'other.com'",)),
    ({"hostname": "h.example.com", "service": "plat", "zone_id": "f" * 32}, ("is not in zone",)),
    ({"hostname": "h.example.com", "service": "plat", "environment": "staging"}, ("environment 'staging'",)),
])
def test_a_malformed_custom_domain_is_refused_and_changes_nothing(server, body, words):
    before = server.admin("GET", f"{A}/workers/domains").json()["result"]
    refused(server.admin("PUT", f"{A}/workers/domains", body), 400, *words)
    refused(server.admin("PUT", f"{A}/workers/scripts/plat/domains/records",
                         {"origins": [{"hostname": "ok.example.com"}, {"hostname": "a..b"}]}), 400, "a..b")
    assert server.admin("GET", f"{A}/workers/domains").json()["result"] == before
    refused(server.admin("GET", f"{A}/workers/domains/%00"), 404, "does not exist")


# -- R2 objects over REST -----------------------------------------------------------


def test_an_object_in_a_bucket_called_objects_keeps_its_key(server):
    """The key is what follows the route's own ``objects`` segment, not the
    path's first ``/objects/`` (which was the bucket's name here)."""
    # (A trailing slash and empty segments are the key's, a %2F a slash in it.)
    for written, key in (("photo.jpg", "photo.jpg"), ("dir/", "dir/"), ("a//b//", "a//b//"),
                         ("sp%20ace/x%2Fy", "sp ace/x/y"), ("objects/%6Fbjects", "objects/objects")):
        put = server.admin("PUT", OBJECTS.format(bucket="objects", key=written), key.encode())
        assert put.status == 200 and put.json()["result"]["key"] == key, put
        got = server.admin("GET", OBJECTS.format(bucket="objects", key=written))
        assert (got.status, got.body) == (200, key.encode())
    # What the API put, the tenant's binding reads under the same key.
    assert server.request("/r2/photo.jpg", host="plat.test").text == "photo.jpg"
    # An account label called "objects" is no part of the key either.
    put = server.admin("PUT", "/client/v4/accounts/objects/r2/buckets/objects/objects/x/y", b"xy")
    assert put.json()["result"]["key"] == "x/y", put
    assert server.request("/r2/x/y", host="plat.test").text == "xy"


def test_an_object_whose_metadata_no_header_can_carry_is_still_read(server):
    """A tenant's binding stores any text as an object's HTTP metadata; a
    line break or a NUL in it made every read through the API a 500."""
    assert server.request("/metadata", host="plat.test").text == "put"
    for key, content_type in (("crlf", "application/octet-stream"), ("nul", "application/octet-stream"),
                              ("spaced", "text/plain")):
        got = server.admin("GET", OBJECTS.format(bucket="objects", key=key))
        assert (got.status, got.body, got.headers["content-type"]) == (200, key.encode(), content_type), got
        assert "x-injected" not in got.headers
        assert got.headers.get("content-language") == (None if content_type != "text/plain" else "text/plain")


@pytest.mark.parametrize(("key", "status", "words"), [
    ("a%00b", 400, ("without NUL",)),
    ("%ff%fe", 400, ("percent-escapes must be UTF-8",)),
    ("%ED%A0%80", 400, ("percent-escapes must be UTF-8",)),
    ("x" * 1025, 400, ("longer than 1024",)),
    ("/".join(["k" * 600, "k" * 600]), 400, ("1 to 1024 bytes",)),
    ("/".join(["s"] * 70), 400, ("at most 64",)),
])
def test_a_hostile_object_key_is_refused_and_the_bucket_is_intact(server, key, status, words):
    kept = server.admin("PUT", OBJECTS.format(bucket="objects", key="kept"), b"kept")
    assert kept.status == 200, kept
    refused(server.admin("PUT", OBJECTS.format(bucket="objects", key=key), b"data"), status, *words)
    refused(server.admin("GET", OBJECTS.format(bucket="objects", key=key)), status, *words)
    assert server.admin("GET", OBJECTS.format(bucket="objects", key="kept")).body == b"kept"
    still_serving(server)


def test_a_huge_content_length_is_refused_before_any_body(server):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(server.socket_path)
        sock.sendall(f"PUT {OBJECTS.format(bucket='objects', key='huge')} HTTP/1.1\r\nHost: corral\r\n"
                     f"Content-Length: {2**63}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer
    assert b"larger than" in json.loads(body)["errors"][0]["message"].encode()
    refused(server.admin("GET", OBJECTS.format(bucket="objects", key="huge")), 404, "does not exist")
    still_serving(server)


# -- D1 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(server):
    made = server.admin("POST", f"{A}/d1/database", {"name": "hostile"})
    uuid = made.json()["result"]["uuid"]
    setup = server.admin("POST", f"{A}/d1/database/{uuid}/query",
                         {"sql": "CREATE TABLE t (a, b); INSERT INTO t VALUES (1, 'one')"})
    assert setup.status == 200, setup
    return uuid


def _rows(server, database) -> list[dict[str, Any]]:
    resp = server.admin("POST", f"{A}/d1/database/{database}/query", {"sql": "SELECT * FROM t ORDER BY a"})
    return resp.json()["result"][0]["results"]


@pytest.mark.parametrize(("body", "words"), [
    # Both: the sql ran and the batch (its write here) was dropped without a word.
    ({"sql": "INSERT INTO t VALUES (2, 'sql')", "batch": [{"sql": "INSERT INTO t VALUES (3, 'batch')"}]},
     ('"sql" or "batch", not both',)),
    ({"sql": "INSERT INTO t VALUES (2, 'two')", "params": 0}, ("params must be a list", "int")),
    ({"sql": "INSERT INTO t VALUES (2, 'two')", "params": {}}, ("params must be a list", "dict")),
    ({"batch": [{"sql": "INSERT INTO t VALUES (2, 'two')", "params": ""}]}, ("params must be a list", "str")),
    ({"batch": [{"sql": "INSERT INTO t VALUES (2, 'two')"}, 5]}, ("each batch entry",)),
    ({"batch": []}, ("batch holds no statement",)),
    ({"sql": "SELECT ?", "params": [2**64]}, ("does not fit in 64 bits",)),
])
def test_a_malformed_d1_query_is_refused_and_writes_nothing(server, database, body, words):
    before = _rows(server, database)
    for endpoint in ("query", "raw"):
        refused(server.admin("POST", f"{A}/d1/database/{database}/{endpoint}", body), 400, *words)
    assert _rows(server, database) == before


@pytest.mark.parametrize(("options", "words"), [
    ({"no_schema": "yes"}, ("$.dump_options.no_schema",)),
    ({"tables": "t"}, ("$.dump_options.tables",)),
    ({"tables": [5]}, ("$.dump_options.tables[0]",)),
    ({"tables": ["t", "nope"]}, ("no such table to export: nope",)),
    ({"tables": ["sqlite_master"]}, ("no such table to export: sqlite_master",)),
])
def test_a_d1_export_with_bad_options_is_refused(server, database, options, words):
    resp = server.admin("POST", f"{A}/d1/database/{database}/export",
                        {"output_format": "polling", "dump_options": options})
    refused(resp, 400, *words)


def test_a_d1_export_url_with_another_token_is_not_found(server, tcp, database):
    made = tcp.post(f"/client/v4{A}/d1/database/{database}/export", json={"output_format": "polling"})
    url = made.json()["result"]["result"]["signed_url"]
    assert httpx.get(url).text.startswith("PRAGMA defer_foreign_keys=TRUE;")  # no credentials: the URL is
    token = url.rsplit("/", 1)[1]
    for other in (token[:-1], token + "x", "%00", "x" * 1000):
        refused(httpx.get(url.rsplit("/", 1)[0] + "/" + other), 404, "no such export")


# -- queue messages ------------------------------------------------------------------


@pytest.fixture(scope="module")
def queue(server):
    queue_id = server.admin("POST", f"{A}/queues", {"queue_name": "hostile"}).json()["result"]["queue_id"]
    # Pulling needs the queue's HTTP pull consumer, as on Cloudflare.
    made = server.admin("POST", f"{A}/queues/{queue_id}/consumers", {"type": "http_pull"})
    assert made.status == 200, made
    return queue_id


@pytest.mark.parametrize("attempt", [
    "²",  # str.isdigit says yes, int() says no
    "١",  # an Arabic-Indic one: int() takes it, no pull gives it
    "99999999999999999999",  # past SQLite's 64-bit integer
    "9" * 5000,  # past int()'s 4300 digits
])
def test_a_lease_no_pull_gave_is_refused_and_the_message_kept(server, queue, attempt):
    messages = f"{A}/queues/{queue}/messages"
    assert server.admin("POST", messages, {"body": attempt[:10], "content_type": "text"}).status == 200
    pulled = server.admin("POST", f"{messages}/pull", {"batch_size": 1, "visibility_timeout_ms": 600_000})
    (message,) = pulled.json()["result"]["messages"]
    message_id = message["lease_id"].rpartition(".")[0]
    for body in ({"acks": [{"lease_id": f"{message_id}.{attempt}"}]},
                 {"retries": [{"lease_id": f"{message_id}.{attempt}", "delay_seconds": 0}]}):
        refused(server.admin("POST", f"{messages}/ack", body), 400, "is not one a pull gave")
    acked = server.admin("POST", f"{messages}/ack", {"acks": [{"lease_id": message["lease_id"]}]})
    assert acked.json()["result"]["ackCount"] == 1, acked  # the message was there, unchanged, until now


@pytest.mark.parametrize(("path", "body", "words"), [
    ("", b"[]", ("Expected `object`",)),
    ("", {"body": "x", "content_type": "v8"}, ("structured clone",)),
    ("", {"body": 5, "content_type": "text"}, ("needs a string body",)),
    ("", {"body": "x", "delay_seconds": -1}, ("delaySeconds",)),
    ("/batch", {"messages": []}, ("1 to 100 messages",)),
    ("/batch", {"messages": [{"body": 1}], "delay_seconds": "soon"}, ("$.delay_seconds",)),
    ("/pull", {"batch_size": 10**30}, ("batch_size must be from 1",)),
    ("/pull", {"visibility_timeout_ms": 1.5}, ("visibility_timeout_ms must be a whole number",)),
    ("/ack", {"acks": [{"lease_id": 5}]}, ("$.acks[0].lease_id",)),
])
def test_a_malformed_queue_call_is_refused(server, queue, path, body, words):
    refused(server.admin("POST", f"{A}/queues/{queue}/messages{path}", body), 400, *words)


def test_a_purge_needs_its_flag_as_a_boolean(server, queue):
    messages = f"{A}/queues/{queue}/messages"
    assert server.admin("POST", messages, {"body": "stays"}).status == 200
    for body in (b"", b"[]", {"delete_messages_permanently": "yes"}, {"delete_messages_permanently": False}):
        refused(server.admin("POST", f"{A}/queues/{queue}/purge", body), 400, "delete_messages_permanently")
    pulled = server.admin("POST", f"{messages}/pull", {"batch_size": 10}).json()["result"]["messages"]
    assert [m["body"] for m in pulled] == ['"stays"']
    server.admin("POST", f"{messages}/ack", {"acks": [{"lease_id": m["lease_id"]} for m in pulled]})


# -- wrangler tail's WebSocket ----------------------------------------------------------


class TailSocket:
    """A tail's socket, spoken byte by byte (frames hand-made, masked or not)."""

    def __init__(self, server, tcp, receive_buffer: int | None = None) -> None:
        made = tcp.post(f"/client/v4{A}/workers/scripts/plat/tails", json={})
        assert made.status_code == 200, made.text
        self.id = made.json()["result"]["id"]
        self.sock = socket.socket()
        if receive_buffer:  # a client that reads slowly, as one that stopped reading
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", server.tcp_port))
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(f"GET /client/v4{A}/workers/tails/{self.id}/ws HTTP/1.1\r\nHost: corral\r\n"
                          "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          "Sec-WebSocket-Protocol: trace-v1\r\n".encode() + b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, self.buffer
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def frame(self) -> tuple[int, bytes] | None:
        """The server's next frame (opcode, payload), or None once it closed the connection."""
        while (frame := self._parse()) is None:
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk
        return frame

    def _parse(self) -> tuple[int, bytes] | None:
        start = {126: 4, 127: 10}.get(self.buffer[1] & 0x7F, 2) if len(self.buffer) >= 2 else 2
        if len(self.buffer) < start:
            return None
        length = int.from_bytes(self.buffer[2:start], "big") if start > 2 else self.buffer[1] & 0x7F
        if len(self.buffer) < start + length:
            return None
        opcode, payload = self.buffer[0] & 0x0F, self.buffer[start:start + length]
        self.buffer = self.buffer[start + length:]
        return opcode, payload

    def pong(self, payload: bytes) -> bool:
        """Whether the pong of ``payload`` comes before the server closes the connection."""
        while (frame := self.frame()) is not None:
            if frame == (0xA, payload):
                return True
        return False

    def close(self) -> None:
        self.sock.close()


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    key = os.urandom(4)
    assert len(payload) < 126
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + key + bytes(
        b ^ key[i % 4] for i, b in enumerate(payload))


def _flood(server, requests: int = 50) -> None:
    """Trace events of ~160 kB each: more than the socket buffers hold, so the
    server's relay waits in its send for a client that does not read."""
    for _ in range(requests):
        assert server.request("/", host="plat.test").status == 200


@pytest.mark.parametrize("then", ["ping", "close", "reset"])
def test_a_tail_client_that_stops_reading_and_then_pings_closes_or_resets(server, tcp, then):
    """The relay was blocked sending events: the reader's pong (or its answer
    to a close) was a second send on the socket, trio's BusyResourceError;
    and the relay's broken pipe, when the client reset the connection, came
    out of its nursery in an ExceptionGroup. Either ended the whole supervisor."""
    ws = TailSocket(server, tcp, receive_buffer=4096)
    _flood(server)
    if then == "ping":
        ws.sock.sendall(masked(0x9, b"still there?"))
        assert ws.pong(b"still there?")  # once the client reads again
    elif then == "close":
        ws.sock.sendall(masked(0x8, (1000).to_bytes(2, "big")))
        while ws.frame() is not None:  # the events, maybe a close, then the end
            pass
    else:  # the reader waits to send its pong: only the relay is on the socket when it breaks
        ws.sock.sendall(masked(0x9, b"never read"))
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close()
    still_serving(server, tcp)
    again = TailSocket(server, tcp)  # the tail works for the next client
    again.sock.sendall(masked(0x9, b"next"))
    assert again.pong(b"next")
    again.close()


@pytest.mark.parametrize(("frames", "answered"), [
    # Tolerated: a reserved opcode, a control frame marked as a fragment, an unmasked frame.
    pytest.param(masked(0x3, b"reserved") + masked(0xB, b"reserved control"), True, id="reserved-opcodes"),
    pytest.param(masked(0x9, b"fragment", fin=False), True, id="fragmented-ping"),
    pytest.param(bytes([0x81, 5]) + b"hello", True, id="unmasked"),
    # Over the 64 KiB a tail's client may send: the connection ends.
    pytest.param(bytes([0x82, 0xFF]) + (2**63 - 1).to_bytes(8, "big") + os.urandom(4), False, id="2**63-1-bytes"),
    pytest.param(bytes([0x82, 0xFF]) + (2**64 - 1).to_bytes(8, "big"), False, id="2**64-1-bytes"),
    pytest.param(bytes([0x82, 0xFF]) + (2**20).to_bytes(8, "big"), False, id="1MiB"),
    # Within the limit and never sent whole; then not frames at all: the server waits for more.
    pytest.param(bytes([0x82, 0xFE, 0xFF, 0xFF]) + b"\0" * 10, None, id="truncated"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: garbage\r\n\r\n", None, id="http-after-upgrade"),
])
def test_malformed_frames_on_a_tail_socket_end_at_most_that_socket(server, tcp, frames, answered):
    ws = TailSocket(server, tcp)
    ws.sock.sendall(frames)
    if answered:
        ws.sock.sendall(masked(0x9, b"after"))
        assert ws.pong(b"after")
    else:
        if answered is None:  # the server waits for the rest of a frame (or reads garbage as one)
            ws.sock.shutdown(socket.SHUT_WR)
        assert not ws.pong(b"after")  # the server ended the connection, and only it
    ws.close()
    still_serving(server, tcp)


def test_an_abruptly_reset_tail_socket_leaves_the_server_serving(server, tcp):
    ws = TailSocket(server, tcp)
    ws.sock.sendall(bytes([0x89, 0x80, 0x01]))  # a masked ping cut in its key
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close()  # a reset, not a close
    still_serving(server)
    fresh = TailSocket(server, tcp)
    fresh.sock.sendall(masked(0x9, b"fresh"))
    assert fresh.pong(b"fresh")
    fresh.close()


def test_a_masked_frame_whose_key_arrives_later_is_read_whole():
    """A masked empty ping cut after its two header bytes was taken as an
    unmasked one, and its mask key as the start of the next frame."""
    buffer = bytearray(b"\x89\x80")
    assert list(client_frames(buffer)) == []  # the key is still to come
    buffer += b"\x88\x80\x00\x00"  # a key that reads like a close frame's header
    buffer += b"\x89\x80"
    assert list(client_frames(buffer)) == [(0x9, b"")]
    buffer += b"abcd"
    assert list(client_frames(buffer)) == [(0x9, b"")]
    assert buffer == bytearray()
