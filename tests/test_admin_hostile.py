"""Hostile input to the admin API, over the real admin socket of a real server.

Every malformed, oversized, too deeply nested or wrongly typed input must be
answered with a 4xx in Cloudflare's envelope whose message names the problem,
logged, and leave the server and the scripts already deployed working. The
supervisor never answers 500 to any of it.
"""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path
from typing import Any

import pytest

from supervisor.admin.multipart import Part, encode
from supervisor.admin.project import ProjectError, load_project
from tests.harness import Corral, multipart

NS = "/accounts/local/workers/dispatch/namespaces"
PS = "/accounts/local/workers/scripts"
ROUTES = "/accounts/local/workers/routes"
KEEPER = f"{NS}/default/scripts/keeper"
JSON = "application/json"

KEEPER_CODE = '''
from workers import WorkerEntrypoint, Response

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("still here " + self.env.WORD)
'''
GOOD_METADATA: dict[str, Any] = {"main_module": "worker.py",
                                 "bindings": [{"type": "plain_text", "name": "WORD", "text": "x"}]}


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    """``depth`` nested JSON lists around ``leaf``."""
    return b"[" * depth + leaf + b"]" * depth


def parts_body(parts: list[Part]) -> tuple[bytes, str]:
    ctype, body = encode(parts)
    return body, ctype


def upload(metadata: bytes, modules: dict[str, bytes] | None = None) -> tuple[bytes, str]:
    """A multipart upload body with raw metadata bytes and one part per module."""
    parts = [Part(name="metadata", data=metadata, content_type=JSON)]
    for name, code in (modules or {"worker.py": KEEPER_CODE.encode()}).items():
        parts.append(Part(name=name, filename=name.rsplit("/", 1)[-1], data=code))
    return parts_body(parts)


def meta(**fields: Any) -> bytes:
    return json.dumps({**GOOD_METADATA, **fields}).encode()


def admin_raw(server: Corral, request: bytes) -> tuple[int, bytes]:
    """One raw HTTP exchange on the admin socket; reads until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(server.socket_path)
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture(scope="module")
def server(corral: Corral) -> Corral:
    corral.deploy("keeper", KEEPER_CODE, bindings=GOOD_METADATA["bindings"], tags=["plan:free"])
    corral.deploy("tagged", KEEPER_CODE, bindings=GOOD_METADATA["bindings"])  # the tag fuzz's target
    return corral


def check_refused(resp: Any, status: int, words: str) -> str:
    """The envelope of a refusal: the status, one error naming the problem, no result."""
    assert resp.status == status, resp
    envelope = resp.json()
    assert envelope["success"] is False and envelope["result"] is None, envelope
    [err] = envelope["errors"]
    assert words in err["message"], err
    assert len(err["message"]) < 2200, "hostile input is echoed whole"
    return err["message"]


def logged_errors(server: Corral) -> list[dict[str, Any]]:
    """The admin.error lines of the whole log (``Corral.log`` keeps only its tail)."""
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "admin.error":
            out.append(entry)
    return out


# -- JSON bodies of every endpoint that reads one ------------------------------------------------

BODIES: dict[str, tuple[str, str, bytes, int, str]] = {
    # Each was a 500 RecursionError before.
    "namespace-deep-list": ("POST", NS, nested(100_000), 400, "nested more than 32 levels"),
    "namespace-deep-object": ("POST", NS, b'{"a":' * 5000 + b"1" + b"}" * 5000, 400, "nested more than 32"),
    "route-deep": ("POST", ROUTES, nested(100_000), 400, "nested more than 32 levels"),
    "tags-deep": ("PUT", f"{KEEPER}/tags", nested(100_000), 400, "nested more than 32 levels"),
    "just-over-depth": ("POST", NS, b'{"name": ' + nested(40, b'"x"') + b"}", 400, "nested more than 32"),
    # Wrong JSON types and values.
    "namespace-name-int": ("POST", NS, b'{"name": 5}', 400, "invalid namespace name 5"),
    "namespace-name-list": ("POST", NS, b'{"name": ["a"]}', 400, "invalid namespace name"),
    "namespace-list-body": ("POST", NS, b"[1, 2]", 400, 'send {"name": "NAMESPACE"}'),
    "namespace-string-body": ("POST", NS, b'"default"', 400, 'send {"name": "NAMESPACE"}'),
    "namespace-trailing-newline": ("POST", NS, b'{"name": "abc\\n"}', 400, "invalid namespace name"),
    "namespace-huge-name": ("POST", NS, json.dumps({"name": "a" * 500_000}).encode(), 400,
                            "invalid namespace name"),
    "namespace-not-utf8": ("POST", NS, b'{"name": "\xff"}', 400, "not valid JSON"),
    "namespace-lone-surrogate": ("POST", NS, b'{"name": "\\ud800"}', 400,
                                 "name is '\\ud800', text with a lone surrogate"),
    "namespace-huge-int": ("POST", NS, b'{"name": 1' + b"0" * 5000 + b"}", 400, "not valid JSON"),
    "namespace-inf": ("POST", NS, b'{"name": 1e999}', 400, "not valid JSON"),
    "namespace-nan": ("POST", NS, b'{"name": NaN}', 400, "not valid JSON"),
    "namespace-empty": ("POST", NS, b"", 400, "is empty"),
    "namespace-too-large": ("POST", NS, b'{"name": "' + b"a" * (2 * 2**20) + b'"}', 413, "larger than"),
    "route-pattern-int": ("POST", ROUTES, b'{"pattern": 1, "script": "keeper"}', 400, "to add a route"),
    "route-script-list": ("POST", ROUTES, b'{"pattern": "x.example/*", "script": ["a"]}', 400,
                          "to add a route"),
    "route-script-bad": ("POST", ROUTES, b'{"pattern": "x.example/*", "script": "a b"}', 400,
                         "invalid script name"),
    "route-pattern-nul": ("POST", ROUTES, b'{"pattern": "a\\u0000b/*", "script": "keeper"}', 400,
                          "invalid host"),
    "tags-object": ("PUT", f"{KEEPER}/tags", b'{"tags": {"a": 1}}', 400, "send the tags as a JSON list"),
    "tags-ints": ("PUT", f"{KEEPER}/tags", b"[1, 2]", 400, "invalid tag 1"),
    "tags-huge-nested": ("PUT", f"{KEEPER}/tags", json.dumps([["a" * 100_000]]).encode(), 400, "invalid tag"),
    "tags-too-many": ("PUT", f"{KEEPER}/tags", json.dumps([f"t{i}" for i in range(10_000)]).encode(), 400,
                      "at most 8 tags"),
    "tags-control-char": ("PUT", f"{KEEPER}/tags", b'["a\\u0007"]', 400, "control characters"),
    # A 500 RecursionError before: script-settings decoded its body without the depth bound.
    "script-settings-deep": ("PATCH", f"{PS}/keeper/script-settings",
                             b'{"tail_consumers": [{"service": "x", "x": ' + nested(100_000) + b"}]}", 400,
                             "script settings is nested more than 32"),
    "script-settings-not-json": ("PATCH", f"{PS}/keeper/script-settings", b"{", 400,
                                 "script settings is not valid JSON"),
}


@pytest.mark.parametrize("name", list(BODIES))
def test_hostile_json_bodies(server: Corral, name: str) -> None:
    method, path, body, status, words = BODIES[name]
    message = check_refused(server.admin(method, path, body, JSON), status, words)
    assert any(e.get("message") == message and e.get("status") == status for e in logged_errors(server))


# -- upload metadata and multipart framing ------------------------------------------------------

def _uploads() -> dict[str, tuple[bytes, str, int, str]]:
    deep_json = {"type": "json", "name": "J", "json": json.loads(nested(40))}
    cases: dict[str, tuple[tuple[bytes, str], int, str]] = {
        # A 500 RecursionError before.
        "metadata-deep": (upload(nested(100_000)), 400, "the 'metadata' part is nested more than 32"),
        "metadata-deep-object": (upload(b'{"main_module": "worker.py", "x": ' + b'{"a":' * 5000 + b"1"
                                        + b"}" * 5000 + b"}"), 400, "nested more than 32"),
        # Accepted (and stored) before.
        "binding-json-deep": (upload(meta(bindings=[deep_json])), 400, "nested more than 32"),
        "metadata-too-large": (upload(meta(x="a" * (2 * 2**20))), 413, "larger than"),
        "too-many-bindings": (upload(meta(bindings=[{"type": "plain_text", "name": f"A{i}", "text": "x"}
                                                    for i in range(1001)])), 400,
                              "Expected `array` of length <= 1000 - at `$.bindings`"),
        "too-many-tail-consumers": (upload(meta(tail_consumers=[{"service": "keeper"}] * 101)), 400,
                                    "Expected `array` of length <= 100 - at `$.tail_consumers`"),
        # Wrong types.
        "metadata-list": (upload(b"[1]"), 400, "must be a JSON object"),
        "metadata-not-utf8": (upload(b'{"main_module": "\xff"}'), 400, "not valid JSON"),
        "metadata-empty": (upload(b""), 400, "is empty"),
        "main-module-int": (upload(meta(main_module=5)), 400, "Expected `str | null`, got `int` - at `$.main_module`"),
        "bindings-object": (upload(meta(bindings={"a": 1})), 400, "Expected `array`, got `object` - at `$.bindings`"),
        "binding-not-object": (upload(meta(bindings=["WORD"])), 400,
                               "Expected `object`, got `str` - at `$.bindings[0]`"),
        "binding-name-list": (upload(meta(bindings=[{"type": "plain_text", "name": ["A"], "text": "x"}])),
                              400, "Expected `str`, got `array` - at `$.bindings[0].name`"),
        "binding-type-list": (upload(meta(bindings=[{"type": ["plain_text"], "name": "A", "text": "x"}])),
                              400, "at `$.bindings[0].type` (known binding types"),
        "binding-text-int": (upload(meta(bindings=[{"type": "plain_text", "name": "A", "text": 5}])),
                             400, "Expected `str`, got `int` - at `$.bindings[0].text`"),
        "outbound-params-nested": (upload(meta(bindings=[{"type": "dispatch_namespace", "name": "D",
                                                          "namespace": "default",
                                                          "outbound": {"params": [[1]]}}])),
                                   400, "Expected `str | object`, got `array` - at `$.bindings[0].outbound.params[0]`"),
        "tags-string": (upload(meta(tags="abc")), 400, "Expected `array | null`, got `str` - at `$.tags`"),
        "tags-int": (upload(meta(tags=[1])), 400, "Expected `str`, got `int` - at `$.tags[0]`"),
        "tail-consumer-int": (upload(meta(tail_consumers=[5])), 400,
                              "Expected `object`, got `int` - at `$.tail_consumers[0]`"),
        "date-int": (upload(meta(compatibility_date=20250101)), 400, "compatibility_date"),
        "keep-bindings-string": (upload(meta(keep_bindings="x")), 400, "keep_bindings"),
        "module-path-escape": (upload(meta(), {"worker.py": b"x = 1", "../evil.py": b"x"}), 400,
                               "invalid module name"),
        "module-path-long": (upload(meta(), {"worker.py": b"x = 1", "a" * 5000 + ".py": b"x"}), 400,
                             "invalid module name"),
        # Multipart framing and limits.
        "too-many-parts": (upload(meta(), {"worker.py": b"x = 1", **{f"m{i}.py": b"" for i in range(1001)}}),
                           413, "more than 1000 parts"),
        "no-metadata": (parts_body([Part(name="worker.py", data=b"x = 1")]), 400, "no 'metadata' part"),
    }
    out = {}
    for name, ((body, ctype), status, words) in cases.items():
        out[name] = (body, ctype, status, words)
    return out


UPLOADS = _uploads()
BOUNDARY = "multipart/form-data; boundary=b"
RAW_UPLOADS: dict[str, tuple[bytes, str, int, str]] = {
    "part-header-too-large": (b"--b\r\nX-A: " + b"a" * 20_000 + b"\r\n\r\nx\r\n--b--\r\n", BOUNDARY, 413,
                              "bytes of headers"),
    "part-header-not-utf8": (b'--b\r\nContent-Disposition: form-data; name="\xff"\r\n\r\nx\r\n--b--\r\n',
                             BOUNDARY, 400, "not UTF-8"),
    "part-name-bad-escape": (b"--b\r\nContent-Disposition: form-data; name*=utf-8''%ff%fe\r\n\r\nx\r\n--b--\r\n",
                             BOUNDARY, 400, "cannot decode header parameter"),
    "part-name-odd-charset": (b"--b\r\nContent-Disposition: form-data; name*=punycode''%ff\r\n\r\nx\r\n"
                              b"--b--\r\n", BOUNDARY, 400, "cannot decode header parameter"),
    "part-name-unknown-charset": (b"--b\r\nContent-Disposition: form-data; name*=" + b"x" * 3000
                                  + b"''%61\r\n\r\nx\r\n--b--\r\n", BOUNDARY, 400, "cannot decode"),
    "part-folded-header": (b"--b\r\nContent-Disposition: form-data;\r\n name=metadata\r\n\r\nx\r\n--b--\r\n",
                           BOUNDARY, 400, "folded headers"),
    "truncated": (b"--b\r\nContent-Disposition: form-data; name=metadata\r\n\r\n{}", BOUNDARY, 400,
                  "closing boundary is missing"),
    "no-boundary": (b"x", "multipart/form-data", 400, "no boundary"),
    "bad-boundary": (b"x", "multipart/form-data; boundary=\"a\\\"b\"", 400, "invalid multipart boundary"),
    "not-multipart": (b"{}", JSON, 400, "expected Content-Type multipart/form-data"),
    "unterminated-quote": (b"x", 'multipart/form-data; boundary="abc', 400, "unterminated quoted string"),
}


@pytest.mark.parametrize("name", list(UPLOADS) + list(RAW_UPLOADS))
def test_hostile_uploads(server: Corral, name: str) -> None:
    body, ctype, status, words = UPLOADS.get(name) or RAW_UPLOADS[name]
    for path in (f"{NS}/default/scripts/hostile", f"{PS}/hostile"):
        message = check_refused(server.admin("PUT", path, body, ctype), status, words)
        assert any(e.get("message") == message for e in logged_errors(server))
    assert server.admin("GET", f"{NS}/default/scripts/hostile").status == 404


# -- query strings, paths, headers --------------------------------------------------------------

TARGETS: dict[str, tuple[str, str, int, str]] = {
    # SQLite's "Expression tree is too large": a 500 before.
    "list-too-many-tag-filters": ("GET", f"{NS}/default/scripts?tags=" + ",".join(["t"] * 3000),
                                  400, "more than the 32 accepted"),
    "bulk-delete-too-many-tag-filters": ("DELETE", f"{NS}/default/scripts?tags=" + ",".join(["t:no"] * 1400),
                                         400, "more than the 32 accepted"),
    "a-few-too-many-tag-filters": ("GET", f"{NS}/default/scripts?tags=" + ",".join(f"t{i}" for i in range(33)),
                                   400, "33 filters, more than the 32 accepted"),
    "too-many-query-fields": ("GET", f"{NS}/default/scripts?" + "&".join(f"a{i}=1" for i in range(100)),
                              400, "at most 32 query fields"),
    "query-not-utf8": ("GET", f"{NS}/default/scripts?tags=%ff", 400, "malformed request target"),
    "per-page-huge": ("GET", f"{NS}/default/scripts?per_page=" + "9" * 3000, 400, "per_page must be"),
    "per-page-float": ("GET", f"{NS}/default/scripts?per_page=1e3", 400, "per_page must be an integer"),
    "per-page-zero": ("GET", f"{NS}/default/scripts?per_page=0", 400, "per_page must be an integer from 1"),
    "cursor-junk": ("GET", f"{NS}/default/scripts?cursor=%25%25", 400, "invalid cursor"),
    "cursor-prefix-of-name": ("GET", f"{NS}/default/scripts?cursor=YWJjIQ", 400, "invalid cursor"),
    "tag-filter-too-long": ("GET", f"{NS}/default/scripts?tags=" + "a" * 300, 400, "longer than 256"),
    "target-too-long": ("GET", f"{NS}/" + "a" * 10_000, 400, "request target is"),
    "segment-too-long": ("GET", f"{NS}/" + "a" * 2000, 400, "path segment"),
    "too-many-segments": ("GET", "/a" * 80, 400, "segments"),
    "namespace-not-utf8": ("GET", f"{NS}/%ff", 400, "malformed request target"),
    "namespace-overlong-utf8": ("GET", f"{NS}/%C0%80", 400, "malformed request target"),
    "namespace-nul": ("GET", f"{NS}/a%00b", 400, "invalid namespace name"),
    "namespace-newline": ("GET", f"{NS}/default%0A", 400, "invalid namespace name"),
    "script-name-long": ("GET", f"{NS}/default/scripts/" + "s" * 500, 400, "invalid script name"),
    "tag-path-long": ("PUT", f"{KEEPER}/tags/" + "t" * 900, 400, "longer than 256"),
    "tag-path-comma": ("PUT", f"{KEEPER}/tags/a,b", 400, "cannot contain ','"),
}


@pytest.mark.parametrize("name", list(TARGETS))
def test_hostile_targets(server: Corral, name: str) -> None:
    method, target, status, words = TARGETS[name]
    request = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    got, body = admin_raw(server, request)
    envelope = json.loads(body)
    assert got == status, (got, envelope)
    assert words in envelope["errors"][0]["message"], envelope
    assert len(envelope["errors"][0]["message"]) < 2200


def test_too_many_headers(server: Corral) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    got, body = admin_raw(server, b"GET " + NS.encode() + b" HTTP/1.1\r\nHost: x\r\n" + headers
                          + b"Connection: close\r\n\r\n")
    assert got == 400 and "headers, more than the 128 accepted" in body.decode()


def test_malformed_http_on_the_admin_socket(server: Corral) -> None:
    """The admin listener shares the edge's framing checks."""
    got, body = admin_raw(server, b"POST " + NS.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")
    assert got == 400 and b"both Content-Length and Transfer-Encoding" in body and b"corral_" not in body
    # Refused by the HTTP layer, before the API: still the API's envelope (SPEC section 2).
    envelope = json.loads(body)
    assert envelope["success"] is False and envelope["result"] is None
    assert envelope["errors"][0]["code"] == 10400
    got, body = admin_raw(server, b"GARBAGE\r\n\r\n")
    assert got == 400 and json.loads(body)["errors"][0]["message"].startswith("Bad request: ")


def test_head_is_get_without_its_body(server: Corral) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(server.socket_path)
        sock.sendall(b"HEAD " + NS.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET " + NS.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:200]
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
                 .split(b":")[1])
    # No body after the HEAD's head: the GET's answer follows at once, as long as it said.
    second_head, _, second_body = rest.partition(b"\r\n\r\n")
    assert second_head.startswith(b"HTTP/1.1 200 ") and len(second_body) == length
    assert json.loads(second_body)["success"] is True


def test_a_body_past_the_admin_sockets_limit_is_a_json_413(server: Corral) -> None:
    got, body = admin_raw(server, b"POST " + NS.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 70000000\r\n\r\n")
    envelope = json.loads(body)
    assert got == 413 and envelope["success"] is False
    assert envelope["errors"] == [{"code": 10027, "message": "Request body larger than 67108864 bytes"}]


# -- a bounded, deterministic fuzz over every body-reading endpoint ------------------------------

SEEDS = {
    ("POST", NS): b'{"name": "fuzz-ns"}',
    ("POST", ROUTES): b'{"pattern": "fuzz.example/*", "script": "keeper"}',
    ("PUT", f"{NS}/default/scripts/tagged/tags"): b'["plan:free"]',
}
JUNK = [b"", b"{", b"}", b"[", b"]", b'"', b"\\", b",", b":", b"\x00", b"\xff", b"\xed\xa0\x80", b"1e999",
        b"-", b"null", b"true", b"NaN", b"\\u0000", b"\\ud800", b"[[[[[[[[", b'{"a":' * 40, b" " * 100]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three random edits: flip, insert junk, cut, duplicate, or wrap in nesting."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        pos = rng.randint(0, len(out))
        if op == 0 and out:
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[pos:pos] = rng.choice(JUNK)
        elif op == 2:
            del out[pos:pos + rng.randint(1, 8)]
        elif op == 3:
            out += out[: rng.randint(0, len(out))]
        else:
            depth = rng.choice([1, 31, 33, 2000])
            out = bytearray(b"[" * depth) + out + b"]" * depth
    return bytes(out)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of any type, often where an object or a string is expected."""
    kind = rng.randrange(7 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randint(-2**70, 2**70) if rng.random() < 0.2 else rng.randint(-5, 5)
    if kind == 2:
        return rng.random() < 0.5
    if kind == 3:
        return rng.random()
    if kind == 4:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randint(0, 12)))
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["name", "type", "text", "json", "service", "tags", "bindings", "main_module", "namespace",
            "outbound", "params", "worker"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


FUZZ_ROUNDS = 40


def test_fuzz_json_endpoints_never_500(server: Corral) -> None:
    rng = random.Random(20250611)
    statuses = set()
    for (method, path), seed in SEEDS.items():
        for _ in range(FUZZ_ROUNDS):
            body = mutate(rng, seed) if rng.random() < 0.7 else json.dumps(random_json(rng)).encode()
            resp = server.admin(method, path, body, JSON)
            statuses.add(resp.status)
            assert resp.status < 500, (method, path, body[:200], resp)
            assert resp.json()["success"] is (resp.status < 400)
    assert statuses - {200}, "the fuzz never hit an error path"


def test_fuzz_upload_metadata_never_500(server: Corral) -> None:
    rng = random.Random(6)
    seed = json.dumps({**GOOD_METADATA, "tags": ["a"], "compatibility_date": "2025-06-01",
                       "tail_consumers": [{"service": "keeper"}]}).encode()
    for _ in range(FUZZ_ROUNDS):
        if rng.random() < 0.5:
            metadata = mutate(rng, seed)
        else:
            fields = {**GOOD_METADATA}
            fields[rng.choice(["main_module", "bindings", "tags", "tail_consumers", "compatibility_date",
                               "keep_bindings"])] = random_json(rng)
            if rng.random() < 0.5:
                fields["bindings"] = [random_json(rng) for _ in range(rng.randint(1, 3))]
            metadata = json.dumps(fields).encode()
        body, ctype = upload(metadata)
        resp = server.admin("PUT", f"{NS}/default/scripts/fuzzed", body, ctype)
        assert resp.status < 500, (metadata[:300], resp)


# -- afterwards: nothing broke -------------------------------------------------------------------

def test_server_and_deployed_scripts_unharmed(server: Corral) -> None:
    """Runs last in this module: everything above left the server and keeper intact."""
    assert server.alive()
    assert server.request("/", host="keeper.localhost").text == "still here x"
    resp = server.admin("GET", KEEPER)
    assert resp.status == 200 and resp.json()["result"]["tags"] == ["plan:free"]
    assert server.admin("GET", "/metrics").status == 200
    # A fresh, valid deploy still goes through.
    body, ctype = multipart(GOOD_METADATA, {"worker.py": KEEPER_CODE})
    assert server.admin("PUT", f"{NS}/default/scripts/after", body, ctype).status == 200
    assert server.request("/", host="after.localhost").text == "still here x"
    assert not [e for e in logged_errors(server) if e.get("status", 0) >= 500]
    assert "Traceback" not in server.log()


# -- the CLI side: a project config from disk ----------------------------------------------------

@pytest.mark.parametrize("name, text", [
    ("wrangler.json", b'{"main": "w.py", "vars": {"A": ' + nested(100_000) + b"}}"),
    ("wrangler.jsonc", b'{"main": "w.py", "vars": {"A": ' + nested(100_000) + b"}}"),
    ("wrangler.toml", b'main = "w.py"\nvars = { A = ' + nested(100_000) + b" }\n"),
])
def test_deeply_nested_project_config(tmp_path: Path, name: str, text: bytes) -> None:
    (tmp_path / name).write_bytes(text)
    (tmp_path / "w.py").write_text("x = 1\n")
    with pytest.raises(ProjectError, match="nested too deeply"):
        load_project(tmp_path)


def test_a_full_state_directory_is_a_507_not_an_internal_error():
    """ENOSPC from a write, or SQLITE_FULL from the database: the operator's
    disk is full, said as such, not "internal error" (durability audit F6)."""
    import errno
    import sqlite3

    from supervisor.admin.errors import ErrorCode, status_and_code

    status, code, message = status_and_code(OSError(errno.ENOSPC, "No space left on device"))
    assert (status, code) == (507, ErrorCode.STORAGE_FULL) and message.startswith("the state directory is full")
    conn = sqlite3.connect(":memory:")
    conn.execute("PRAGMA max_page_count = 1")
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (randomblob(100000))")
    except sqlite3.Error as exc:
        full = exc
    assert status_and_code(full)[:2] == (507, ErrorCode.STORAGE_FULL), full
    assert status_and_code(OSError(errno.EACCES, "Permission denied"))[0] == 500


def test_a_lone_surrogate_is_named_where_it_is(server: Corral) -> None:
    """A lone surrogate escape is valid JSON but no UTF-8 text: the refusal
    names the field and shows the value (msgspec alone said "Input data was
    truncated")."""
    server.deploy("surrogate-tags", "from workers import Response, WorkerEntrypoint\n"
                  "class Default(WorkerEntrypoint):\n    async def fetch(self, request):\n"
                  "        return Response('x')\n", namespace=None)
    base = "/accounts/local/workers/scripts/surrogate-tags"
    for method, path, body, where in (
            ("PUT", f"{base}/tags", b'["ok", "bad\\ud800"]', "the tags: [1] is 'bad\\ud800'"),
            ("PATCH", f"{base}/script-settings", b'{"tags": ["x", "\\udfffy"]}',
             "script settings: tags[1] is '\\udfffy'")):
        resp = server.admin(method, path, body)
        assert resp.status == 400, resp
        message = resp.json()["errors"][0]["message"]
        assert where in message and "lone surrogate" in message and "truncated" not in message, message
    assert server.admin("GET", f"{base}/tags").json()["result"] == []
