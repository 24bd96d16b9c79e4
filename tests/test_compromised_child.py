# ruff: noqa: E501 - a table of cases, one frame sequence a line
"""A compromised child: tenant code that writes the supervisor's own protocol.

The jail is the boundary, so whatever runs in a child can send any frame its
channel carries, not only what the SDK would: well-typed messages (they pass
the decoder) with values no SDK call makes, ids that are not its own, streams
that were never opened, answers given twice. Each case below is such a
sequence, built from ``protocol.messages`` inside a real sandbox with the
child's own runtime and sent on its real channel. Whatever it does, the
supervisor stays up, other tenants are served, and no handler of the
supervisor's fails on it (``child.handler_failed`` is the last line of
defence: it is logged with a traceback, and each case must be refused before
that, by the checks it was meant to pass or not).
"""

from __future__ import annotations

import http.client
import json

import msgspec
import pytest

from tests.harness import Corral

NS = "default"

#: Builds the case's messages with ``inv`` (the running invocation's id) and
#: ``M`` (protocol.messages), sends them on the child's channel, and answers
#: if the child is still alive to do so.
HOSTILE = '''
import asyncio, math, sys
from urllib.parse import urlparse, parse_qs
import workers
from workers import DurableObject, Response, WorkerEntrypoint

M = sys.modules["protocol.messages"]
CASES = {CASES}

async def send(case):
    runtime = workers._runtime
    inv, c = workers.current_invocation.get(), runtime._next_call
    runtime._next_call = c - 10**6
    for message in eval(CASES[case], {{"M": M, "inv": inv, "c": c, "math": math}}):
        runtime.send(message)
    runtime.channel.push()
    await asyncio.sleep(0.05)
    return "sent " + case


class Hostile(DurableObject):
    async def run(self, case):
        return await send(case)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        case = parse_qs(urlparse(request.url).query)["case"][0]
        if case.startswith("do-"):
            return Response(await self.env.OBJ.getByName("h").run(case))
        return Response(await send(case))
'''

ECHO = '''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("echo")
'''

_H = "[(b'x-a', b'b')]"

#: name -> a Python expression of a list of messages (``inv``: the invocation's own id).
#: ``c`` is the runtime's next call id (each must be lower than the last, or the
#: child is killed before the frame is looked at); the runtime's own calls then
#: continue far below what a case used.
CASES = {
    # --- binding calls -------------------------------------------------------
    "bcall-unknown-binding": "[M.BindingCall(c, inv, 'NOPE', 'get', ['k'])]",
    "bcall-unknown-method": "[M.BindingCall(c, inv, 'KV', '__class__', [])]",
    "bcall-dunder-method": "[M.BindingCall(c, inv, 'KV', '__init__', [1, 2])]",
    "bcall-args-nested": "[M.BindingCall(c, inv, 'KV', 'get', [[[[[[[[[[['k']]]]]]]]]]])]",
    "bcall-args-huge-int": "[M.BindingCall(c, inv, 'KV', 'put', ['k', 2**64 - 1])]",
    "bcall-args-floats": "[M.BindingCall(c, inv, 'KV', 'put', ['k', 'v', {'expirationTtl': math.nan}])]",
    "bcall-args-dict-keys": "[M.BindingCall(c, inv, 'KV', 'list', [{'limit': -1, 'cursor': 5}])]",
    "bcall-other-parent": "[M.BindingCall(c, inv + 1000, 'KV', 'get', ['k'])]",
    "bcall-parent-zero": "[M.BindingCall(c, 0, 'KV', 'get', ['k'])]",
    "bcall-positive-call": "[M.BindingCall(7, inv, 'KV', 'get', ['k'])]",
    "bcall-same-call-twice": "[M.BindingCall(c, inv, 'KV', 'get', ['k']), M.BindingCall(c, inv, 'KV', 'get', ['k'])]",
    "bcall-args-in-body-no-body": "[M.BindingCall(c, inv, 'KV', 'put', [], None, True)]",
    "bcall-args-in-body-garbage": "[M.BindingCall(c, inv, 'KV', 'put', [], M.Inline(b'\\xc1\\xc1'), True)]",
    "bcall-args-in-body-not-list": "[M.BindingCall(c, inv, 'KV', 'put', [], M.Inline(b'\\x05'), True)]",
    "bcall-body-byref-unknown": "[M.BindingCall(c, inv, 'BUCKET', 'put', ['k'], M.ByRef(987654))]",
    "bcall-body-socket": "[M.BindingCall(c, inv, 'BUCKET', 'put', ['k'], M.Socket(3))]",
    "bcall-streamed-never-ends": "[M.BindingCall(c, inv, 'BUCKET', 'put', ['k'], M.STREAMED)]",
    "bcall-streamed-then-abort": "[M.BindingCall(c, inv, 'BUCKET', 'put', ['k'], M.STREAMED), M.Abort(c, 'x')]",
    "bcall-cache-garbage": "[M.BindingCall(c, inv, M.CACHE_BINDING, 'put', [None, 5, b'x'])]",
    "bcall-storage-outside-do": "[M.BindingCall(c, inv, M.DO_STORAGE, 'get', ['k'])]",
    "bcall-d1-garbage": "[M.BindingCall(c, inv, 'DB', 'all', [{'sql': 5}])]",
    "bcall-queue-garbage": "[M.BindingCall(c, inv, 'Q', 'send', [None, {'delaySeconds': -1e308}])]",
    "bcall-do-garbage": "[M.BindingCall(c, inv, 'OBJ', 'get', [[1, 2, 3]])]",
    # --- subrequests ----------------------------------------------------------
    "subreq-fetch-bad-url": "[M.SubRequest(c, inv, 'fetch', b'GET', 'ht!tp://\\x00', [])]",
    "subreq-fetch-bad-method": "[M.SubRequest(c, inv, 'fetch', b'GET /x HTTP/1.1\\r\\n', 'http://a.test/', [])]",
    "subreq-fetch-bad-headers": "[M.SubRequest(c, inv, 'fetch', b'GET', 'http://a.test/', [(b'x\\r\\ny', b'z\\n')])]",
    "subreq-fetch-redirect": "[M.SubRequest(c, inv, 'fetch', b'GET', 'http://a.test/', [], redirect='sideways')]",
    "subreq-fetch-body-unknown-ref": "[M.SubRequest(c, inv, 'fetch', b'POST', 'http://a.test/', [], body=M.ByRef(-77))]",
    "subreq-fetch-body-socket": "[M.SubRequest(c, inv, 'fetch', b'POST', 'http://a.test/', [], body=M.Socket(-3))]",
    "subreq-fetch-limits": "[M.SubRequest(c, inv, 'fetch', b'GET', 'http://a.test/', [], limits=M.Limits(-5, -1))]",
    "subreq-dispatch-unbound": "[M.SubRequest(c, inv, 'dispatch', b'GET', 'http://a.test/', [], binding='nope', target='echo')]",
    "subreq-service-unbound": "[M.SubRequest(c, inv, 'service', b'GET', 'http://a.test/', [], binding='nope', target='echo')]",
    "subreq-service-rpc": "[M.SubRequest(c, inv, 'service', b'POST', 'http://a.test/', [], binding='SELF', target='x', rpc='__init__', body=M.Inline(b'\\xc1'))]",
    "subreq-service-crlf-method": "[M.SubRequest(c, inv, 'service', b'GET\\r\\nX: y', 'http://a.test/', [], binding='SELF', target='svc')]",
    "subreq-loader-unbound": "[M.SubRequest(c, inv, 'loader', b'GET', 'http://a.test/', [], binding='nope', target='x')]",
    "subreq-assets-none": "[M.SubRequest(c, inv, 'assets', b'GET', 'http://a.test/', [])]",
    "subreq-other-parent": "[M.SubRequest(c, inv + 1000, 'fetch', b'GET', 'http://a.test/', [])]",
    "subreq-same-call-twice": "[M.SubRequest(c, inv, 'fetch', b'GET', 'http://a.test/', []), M.SubRequest(c, inv, 'fetch', b'GET', 'http://a.test/', [])]",
    "subreq-params-huge": "[M.SubRequest(c, inv, 'fetch', b'GET', 'http://a.test/', [], params={str(i): i for i in range(20000)})]",
    # --- answers ---------------------------------------------------------------
    "respond-twice": "[M.ResponseStart(inv, 200, []), M.ResponseStart(inv, 201, [])]",
    "respond-status-0": "[M.ResponseStart(inv, 0, [])]",
    "respond-status-huge": "[M.ResponseStart(inv, 2**40, [])]",
    "respond-status-negative": "[M.ResponseStart(inv, -200, [])]",
    "respond-other-id": "[M.ResponseStart(inv + 1000, 200, [])]",
    "respond-bad-headers": "[M.ResponseStart(inv, 200, [(b'x\\r\\ny', b'\\x00'), (b'', b'')])]",
    "respond-many-headers": "[M.ResponseStart(inv, 200, [(b'x-%d' % i, b'v') for i in range(20000)])]",
    "respond-bad-status-text": "[M.ResponseStart(inv, 200, [], None, 'OK\\r\\nX: y')]",
    "respond-byref-unknown": "[M.ResponseStart(inv, 200, [], M.ByRef(424242))]",
    "respond-socket-unknown": "[M.ResponseStart(inv, 101, [], M.Socket(99))]",
    "respond-socket-foreign": "[M.ResponseStart(inv, 101, [], M.Socket(-99))]",
    "respond-streamed-chunks-other-stream": "[M.ResponseStart(inv, 200, [], M.STREAMED), M.BodyChunk(inv + 5, b'x', True)]",
    "respond-streamed-double-end": "[M.ResponseStart(inv, 200, [], M.STREAMED), M.BodyChunk(inv, b'x', True), M.BodyChunk(inv, b'y', True)]",
    "chunk-unknown-stream": "[M.BodyChunk(123456, b'x')]",
    "chunk-negative-stream": "[M.BodyChunk(-123456, b'x', True)]",
    "credit-unknown": "[M.Credit(123456, 10)]",
    "credit-negative": "[M.Credit(inv, -2**62)]",
    "credit-huge": "[M.Credit(inv, 2**63 - 1)]",
    "abort-unknown": "[M.Abort(654321, 'x' * 1000)]",
    "abort-own-request": "[M.Abort(inv, 'gone')]",
    "failed-then-respond": "[M.InvokeFailed(inv, M.ExceptionInfo('E', 'm')), M.ResponseStart(inv, 200, [])]",
    "done-before-respond": "[M.InvokeDone(inv)]",
    "done-twice": "[M.InvokeDone(inv), M.InvokeDone(inv)]",
    "done-other-id": "[M.InvokeDone(inv + 1000)]",
    "failed-other-id": "[M.InvokeFailed(-inv - 1000, M.ExceptionInfo('E', 'm'))]",
    "qsettled-not-queue": "[M.QueueSettled(inv, ['a'], [('b', math.nan)], 'retry', -1.0)]",
    "qsettled-inf": "[M.QueueSettled(inv, [], [('b', math.inf)], 'sideways', math.inf)]",
    "log-garbage": "[M.Log(inv, 'no-such-level', 'x' * 500000, math.nan), M.Log(-5, 'log', 'y', -math.inf)]",
    "report-other-id": "[M.Report(inv + 1000, M.ExceptionInfo('E' * 10000, 'm'))]",
    "hello-again": "[M.Hello(M.PROTOCOL_VERSION, 1)]",
    "loaded-again": "[M.Loaded(None, ('fetch', 'scheduled') * 1000)]",
    "respond-streamed-huge-chunk": "[M.ResponseStart(inv, 200, [], M.STREAMED), M.BodyChunk(inv, b'x' * 900000, True)]",
    "respond-streamed-chunk-flood": "[M.ResponseStart(inv, 200, [], M.STREAMED)] + [M.BodyChunk(inv, b'x' * 60000) for _ in range(200)]",
    "respond-101-then-flood": "[M.ResponseStart(inv, 101, [], M.Socket(1))] + [M.WsSend(1, b'y' * 60000) for _ in range(200)]",
    "respond-101-twice-same-socket": "[M.ResponseStart(inv, 101, [], M.Socket(1)), M.ResponseStart(inv, 101, [], M.Socket(1))]",
    "subreq-limits-huge": "[M.SubRequest(c, inv, 'service', b'GET', 'http://a.test/', [], binding='SELF', target='svc', limits=M.Limits(2**63 - 1, 2**63 - 1, 2**63 - 1))]",
    "subreq-flood": "[M.SubRequest(c - i, inv, 'service', b'GET', 'http://a.test/', [], binding='SELF', target='svc') for i in range(2000)]",
    "bcall-flood": "[M.BindingCall(c - i, inv, 'KV', 'get', ['k']) for i in range(2000)]",
    "bcall-args-in-body-streamed": "[M.BindingCall(c, inv, 'KV', 'put', [], M.STREAMED, True), M.BodyChunk(c, b'\\x93\\xc1', True)]",
    "qsettled-flood": "[M.QueueSettled(inv, ['m%d' % i for i in range(50000)])]",
    "log-flood": "[M.Log(inv, 'log', 'z' * 1000, 0.0) for _ in range(5000)]",
    # --- inside a Durable Object: its storage and its namespace's stubs ------------
    "do-storage-unknown-method": "[M.BindingCall(c, inv, M.DO_STORAGE, 'vacuum', [])]",
    "do-storage-get-garbage": "[M.BindingCall(c, inv, M.DO_STORAGE, 'get', [[1, None, [2]]])]",
    "do-storage-put-garbage": "[M.BindingCall(c, inv, M.DO_STORAGE, 'put', [[[None, 1], ['k']]])]",
    "do-storage-put-not-pairs": "[M.BindingCall(c, inv, M.DO_STORAGE, 'put', [[1, 2, 3]])]",
    "do-storage-list-garbage": "[M.BindingCall(c, inv, M.DO_STORAGE, 'list', [{'limit': 'x', 'prefix': 5, 'start': [1]}])]",
    "do-storage-sql-garbage": "[M.BindingCall(c, inv, M.DO_STORAGE, 'sql', ['SELECT ?', [[{}], {1: 2}]])]",
    "do-storage-alarm-nan": "[M.BindingCall(c, inv, M.DO_STORAGE, 'setAlarm', [math.nan])]",
    "do-storage-alarm-inf": "[M.BindingCall(c, inv, M.DO_STORAGE, 'setAlarm', [math.inf])]",
    "do-storage-alarm-negative-inf": "[M.BindingCall(c, inv, M.DO_STORAGE, 'setAlarm', [-math.inf])]",
    "do-storage-alarm-huge": "[M.BindingCall(c, inv, M.DO_STORAGE, 'setAlarm', [2**63 - 1])]",
    "do-storage-tx-unbalanced": "[M.BindingCall(c, inv, M.DO_STORAGE, 'txCommit', []), M.BindingCall(c - 1, inv, M.DO_STORAGE, 'txBegin', [])]",
    "do-stub-fetch-bad-headers": "[M.BindingCall(c, inv, 'OBJ', 'fetch', ['0' * 64, None, 'GET', 'http://x/', [[1, 2], ['\u0100', 'v'], 'ab']])]",
    "do-stub-fetch-bad-method": "[M.BindingCall(c, inv, 'OBJ', 'fetch', ['0' * 64, None, '\u0100', 'http://x/', []])]",
    "do-stub-call-garbage": "[M.BindingCall(c, inv, 'OBJ', 'call', ['0' * 64, 5, 'run', 'not bytes'])]",
    "do-stub-call-bad-args": "[M.BindingCall(c, inv, 'OBJ', 'call', ['0' * 64, None, 'run', b'\\xc1\\xc1'])]",
    # --- WebSockets --------------------------------------------------------------
    "wssend-unknown": "[M.WsSend(77, b'x'), M.WsSend(-77, b'y', True, False)]",
    "wsclose-unknown": "[M.WsClose(77, 0, 'r' * 10000), M.WsClose(-77, 2**31)]",
    "wsconnect-garbage": "[M.WsConnect(5, inv, 'ws://\\x00', ['a b', '']), M.WsConnect(5, inv, 'wss://a.test/', [])]",
    "wsconnect-other-parent": "[M.WsConnect(6, inv + 1000, 'ws://a.test/', [])]",
    "wsconnect-negative-id": "[M.WsConnect(-6, inv, 'ws://a.test/', [])]",
}


#: What the hostile script binds (its Durable Object class is its own).
BINDINGS = [
    {"type": "kv_namespace", "name": "KV", "namespace_id": "kv-1"},
    {"type": "d1", "name": "DB", "id": "db-1"},
    {"type": "r2_bucket", "name": "BUCKET", "bucket_name": "b-1"},
    {"type": "queue", "name": "Q", "queue_name": "q-1"},
    {"type": "service", "name": "SELF", "service": "svc"},
    {"type": "durable_object_namespace", "name": "OBJ", "class_name": "Hostile"},
]


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    server = Corral(tmp_path_factory.mktemp("compromised")).start()
    try:
        server.deploy_dispatcher()
        server.deploy("echo", ECHO)
        server.deploy("svc", ECHO, namespace=None)
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_frame_sequence_leaves_the_supervisor_serving(corral: Corral, case: str) -> None:
    # A script of its own per case: the children a case gets killed do not
    # back the next case off as a crash loop (supervisor.pool.crash_loop).
    name = "hostile-" + case
    corral.deploy(name, HOSTILE.format(CASES=json.dumps(CASES)), bindings=BINDINGS)
    before = len(corral.log_events())
    try:
        corral.request(f"/?case={case}", host=f"{name}.localhost")  # its child may well be killed
    except (ConnectionError, ValueError, http.client.HTTPException):
        # What the tenant answered may be more than this client takes (20,000
        # headers). A timeout is not among these: the request must end.
        pass
    assert corral.alive(), corral.log()[-3000:]
    assert corral.request("/", host="echo.localhost").body == b"echo"
    failures = [event for event in corral.log_events()[before:]
                if event.get("event") == "child.handler_failed" or "Traceback" in json.dumps(event)]
    assert not failures, failures


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_case_builds_the_messages_it_means_to_send(case: str) -> None:
    """A case whose expression raised would test nothing: the tenant's handler
    would fail before sending (any answer passes the test above)."""
    import math

    from protocol import messages

    built = eval(CASES[case], {"M": messages, "inv": 2, "c": -7, "math": math})  # noqa: S307 - the cases above
    assert built and all(isinstance(m, msgspec.Struct) for m in built)


def test_a_call_whose_method_is_no_http_token_kills_its_child(corral: Corral) -> None:
    """The SDK refuses such a method (a TypeError); a child that skips the
    SDK does not get it to the script it calls as its request.method."""
    case = "subreq-service-crlf-method"
    name = "hostile-method"
    corral.deploy(name, HOSTILE.format(CASES=json.dumps(CASES)), bindings=BINDINGS)
    assert corral.request(f"/?case={case}", host=f"{name}.localhost").status == 502
    assert "is not an HTTP token" in corral.log()
