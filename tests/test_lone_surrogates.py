"""Text UTF-8 cannot carry, from a tenant, never takes its worker down.

``print("\\ud800")`` (or logging text decoded with ``surrogateescape``) made
the child's frame encoder raise after it had written a frame header into its
output buffer: the supervisor read a malformed frame and killed the child,
failing the request and any other running on it (observability audit, F1).
Now the text goes out escaped, and a frame that cannot be encoded leaves the
buffer as it was.
"""

from __future__ import annotations

import pytest

from protocol.framing import FrameEncoder, supervisor_decoder
from protocol.messages import InvokeDone, Log
from tests.harness import Corral
from tests.test_jail import wait_for

WORKER = r'''
import logging
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/raise"):
            raise ValueError("bad \ud800 value")
        print("lone \ud800 surrogate")
        logging.error(b"caf\xe9".decode("utf-8", "surrogateescape"))
        return Response("still here")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    corral = Corral(tmp_path_factory.mktemp("surrogates") / "state", config="log_invocations = true").start()
    try:
        corral.deploy("talker", WORKER, namespace=None)
        corral.route("talker.localhost/*", "talker")
        yield corral
    finally:
        corral.stop()


def test_a_lone_surrogate_in_a_log_line_is_escaped_not_fatal(server):
    response = server.request(host="talker.localhost")
    assert (response.status, response.text) == (200, "still here")
    # The trace is logged once the invocation is over, after the response.
    assert wait_for(lambda: "caf\\\\udce9" in server.log(), timeout=30), server.log()[-3000:]
    log = server.log()
    assert "lone \\\\ud800 surrogate" in log, log[-3000:]
    assert "protocol_violation" not in log and "malformed frame" not in log


def test_a_lone_surrogate_in_an_exception_is_reported_not_fatal(server):
    response = server.request("/raise", host="talker.localhost")
    assert response.status == 500, response
    assert wait_for(lambda: "bad \\\\ud800 value" in server.log(), timeout=30), server.log()[-3000:]
    # The same child serves on: the failure was the tenant's, reported.
    assert server.request(host="talker.localhost").text == "still here"


def test_a_frame_that_cannot_be_encoded_leaves_the_buffer_as_it_was():
    encoder = FrameEncoder()
    buffer = bytearray()
    encoder.encode_into(InvokeDone(1), buffer)
    with pytest.raises(UnicodeEncodeError):
        encoder.encode_into(Log(1, "log", "\ud800", 0.0), buffer)
    encoder.encode_into(InvokeDone(2), buffer)
    assert supervisor_decoder().feed(buffer) == [InvokeDone(1), InvokeDone(2)]


def test_a_line_cut_for_its_length_is_one_log_line():
    """``print`` of a line longer than a log line may be: the cut line, and
    not an empty one after it for the newline that ended it."""
    from sandbox import logs

    lines: list[str] = []
    logs.set_sink(lambda level, message, cut: lines.append(message))
    try:
        writer = logs.LineWriter("log")
        print("x" * (logs.MAX_LINE + 10), file=writer)
        print("next", file=writer)
        writer.write("y" * (logs.MAX_LINE + 1))  # emitted, cut, before its end comes
        writer.write("z\n")
    finally:
        logs.set_sink(None)
    assert len(lines) == 4, [line[:20] for line in lines]
    assert lines[0].startswith("x" * 100) and lines[0].endswith("[10 characters cut]")
    assert lines[1] == "next" and lines[2].endswith("[1 characters cut]") and lines[3] == "z", lines[3:]
