"""``Content-Encoding: br`` as workerd applies it, and only the names it applies.

workerd's ``getContentEncoding`` (``src/workerd/api/system-streams.c++``)
picks the coding of a body for both directions: a response the worker makes
is encoded, and one ``fetch()`` got is decoded when the worker reads it, for
a ``Content-Encoding`` of exactly ``gzip``, or exactly ``br`` when the script
has ``brotli_content_encoding`` (``compatibility-date.capnp``: on from
2024-04-29, off with ``no_brotli_content_encoding``). Each failed before the
fix: a worker's br response went out plain but labelled br (``curl
--compressed`` failed on it), a fetched br body reached the worker still
encoded, and ``deflate``, ``x-gzip`` and ``GZIP`` were compressed as gzip.

One real ``corral serve`` with the bundled dispatcher (tests/conftest.py),
and a local upstream serving a brotli body (tests/upstream.py).
"""

from __future__ import annotations

import json
from urllib.parse import quote

import brotli
import pytest

from tests.upstream import BR_BOMB_BYTES, BR_TEXT

TEXT = "brotli from the worker, " * 200

SOURCE = '''
import urllib.request
from urllib.parse import unquote

from workers import Response, WorkerEntrypoint, fetch

TEXT = "brotli from the worker, " * 200


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = request.url.split("?")[0].split("/")
        up = self.env.UPSTREAM + "/br"
        if parts[3] == "made":
            return Response(TEXT, headers={"content-encoding": "br", "content-type": "text/plain"})
        if parts[3] == "streamed":
            async def chunks():
                for _ in range(4):
                    yield TEXT.encode()
            return Response(chunks(), headers={"content-encoding": "br"})
        if parts[3] == "named":
            return Response(TEXT, headers={"content-encoding": unquote(parts[4])})
        if parts[3] == "read":
            r = await fetch(up)
            data = await r.bytes()
            s = await fetch(up)
            streamed = b"".join([chunk.to_bytes() async for chunk in s.body])
            return Response.json({"data": data.hex(), "streamed": streamed.hex(),
                                  "header": r.headers.get("content-encoding")})
        if parts[3] == "urllib":
            with urllib.request.urlopen(up) as r:
                return Response.json({"data": r.read().hex(), "header": r.headers.get("content-encoding")})
        if parts[3] == "bomb":  # 256 MB of zeros as a few hundred bytes: read as a stream, piece by piece
            r = await fetch(self.env.UPSTREAM + "/br-bomb")
            total = biggest = 0
            async for chunk in r.body:
                total += len(chunk.to_bytes())
                biggest = max(biggest, len(chunk.to_bytes()))
            return Response.json({"total": total, "small_pieces": biggest <= 1024 * 1024})
        if parts[3] == "pass":
            return await fetch(up)  # unread: as the upstream sent it
        return Response("no such path", status=404)
'''

#: name -> (compatibility date, flags, does it have brotliContentEncoding)
SCRIPTS = {
    "br-dated": ("2025-06-01", [], True),
    "br-flagged": ("2024-01-01", ["brotli_content_encoding"], True),
    "br-before": ("2024-04-28", [], False),
    "br-off": ("2025-06-01", ["no_brotli_content_encoding"], False),
}


@pytest.fixture(scope="module")
def deployed(corral, upstream):
    for name, (date, flags, _) in SCRIPTS.items():
        corral.deploy(name, SOURCE, bindings=[{"type": "plain_text", "name": "UPSTREAM", "text": upstream.url("")}],
                      extra_metadata={"compatibility_date": date, "compatibility_flags": flags})
    return corral


def test_a_response_the_worker_makes_is_brotli_encoded_when_the_flag_is_on(deployed):
    """Encoded for a client to decode (as curl --compressed does), whole or
    streamed; with the flag off, sent as it is, labelled as the worker said."""
    for name, (_, _, on) in SCRIPTS.items():
        made = deployed.request("/made", host=f"{name}.localhost")
        assert made.status == 200, (name, made, deployed.log())
        assert made.headers.get("content-encoding") == "br", name
        assert (brotli.decompress(made.body) if on else made.body) == TEXT.encode(), name
        streamed = deployed.request("/streamed", host=f"{name}.localhost")
        assert streamed.status == 200, (name, streamed, deployed.log())
        assert streamed.headers.get("content-encoding") == "br", name
        assert (brotli.decompress(streamed.body) if on else streamed.body) == TEXT.encode() * 4, name


def test_a_fetched_brotli_body_is_decoded_as_the_worker_reads_it(deployed, upstream):
    """Read (whole or as a stream): decoded when the flag is on, the bytes as
    they came when it is off; returned unread: as the upstream sent it."""
    for name, (_, _, on) in SCRIPTS.items():
        read = deployed.request("/read", host=f"{name}.localhost")
        assert read.status == 200, (name, read, deployed.log())
        got = json.loads(read.body)
        assert got["header"] == "br", name
        for key in ("data", "streamed"):
            data = bytes.fromhex(got[key])
            assert (data if on else brotli.decompress(data)) == BR_TEXT, (name, key)
        passed = deployed.request("/pass", host=f"{name}.localhost")
        assert passed.headers.get("content-encoding") == "br", name
        assert brotli.decompress(passed.body) == BR_TEXT, name
    # The worker's fetch() sends the Accept-Encoding the worker gave (none
    # here), as workerd does: it adds none of its own.
    assert all("accept-encoding" not in r["headers"] for r in upstream.requests if r["path"] == "/br")


def test_a_brotli_body_that_decodes_to_far_more_than_memory_streams_piece_by_piece(deployed):
    """A body of a few hundred bytes that decodes to 256 MB, read as a
    stream: it comes in bounded pieces (each read decoded all the next chunk
    stood for at once, and the worker died of exceededMemory at 128 MB)."""
    resp = deployed.request("/bomb", host="br-dated.localhost", timeout=120)
    assert resp.status == 200, (resp, deployed.log()[-2000:])
    assert resp.json() == {"total": BR_BOMB_BYTES, "small_pieces": True}


def test_only_the_exact_gzip_and_br_names_are_encoded(deployed):
    """workerd compares the header with "gzip" and "br" exactly: any other
    name goes out as the worker made it (Corral compressed deflate, x-gzip
    and case variants as gzip)."""
    for coding in ("deflate", "x-gzip", "GZIP", "Br", "gzip, br"):
        resp = deployed.request(f"/named/{quote(coding)}", host="br-dated.localhost")
        assert resp.status == 200, (coding, resp, deployed.log())
        assert resp.headers.get("content-encoding") == coding
        assert resp.body == TEXT.encode(), coding


def test_http_clients_see_the_coding_fetch_left_encoded(deployed):
    """A library over the brokered fetch (urllib here) gets a body fetch()
    decoded without its Content-Encoding, and one it left encoded with it,
    to decode as from any server (the header was dropped from both, so a br
    body reached the library encoded and unlabelled)."""
    for name, (_, _, on) in SCRIPTS.items():
        resp = deployed.request("/urllib", host=f"{name}.localhost")
        assert resp.status == 200, (name, resp, deployed.log())
        got = json.loads(resp.body)
        data = bytes.fromhex(got["data"])
        assert got["header"] == (None if on else "br"), name
        assert (data if on else brotli.decompress(data)) == BR_TEXT, name


BOM_READER = '''
from workers import Request, Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        made = await Request("https://x.example/", method="POST", body=b"\\xef\\xbb\\xbfhi").text()
        return Response(repr([await request.text(), made]))
'''


@pytest.mark.parametrize("date, flags, stripped", [
    ("2026-02-01", [], True), ("2025-06-01", [], False), ("2025-06-01", ["strip_bom_in_read_all_text"], True),
    ("2026-02-01", ["do_not_strip_bom_in_read_all_text"], False)])
def test_text_strips_a_byte_order_mark_from_workerds_date(corral, date, flags, stripped):
    """workerd's strip_bom_in_read_all_text (on from 2026-01-13): text() of a
    body that starts with a UTF-8 BOM leaves it out (it was kept)."""
    name = f"bom-{date[:4]}-{len(flags)}-{int(stripped)}"
    corral.deploy(name, BOM_READER, extra_metadata={"compatibility_date": date, "compatibility_flags": flags})
    resp = corral.request("/", host=f"{name}.localhost", method="POST", body="\ufeffsent".encode())
    expect = ["sent", "hi"] if stripped else ["\ufeffsent", "\ufeffhi"]
    assert resp.text == repr(expect), resp.text
