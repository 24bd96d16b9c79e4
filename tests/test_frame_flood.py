"""A child that floods its channel with frames is throttled (audit finding F1).

The tenant takes its own channel's socket and writes blobs of one valid
18-byte frame (a ``Credit`` for a stream that never was) in a blocking loop
for two seconds, then answers how many frames it got written. Before the
allowance the supervisor read them all: millions in those two seconds, its
whole core, every other tenant slowed. Now it reads what the child's answers
and time allow (``supervisor.limits.frame_allowance``), the child's writes
block on its full socket, and it gets a small fraction written; the other
tenant is served meanwhile, and the flooder's own answer still comes.
"""

from __future__ import annotations

import threading

import pytest

from supervisor.limits.frame_allowance import BURST, PER_FRAME_SENT, RATE, FrameAllowance
from tests.harness import Corral

FLOOD_S = 2.0

FLOODER = r'''
import fcntl, os, time
from protocol.framing import FrameEncoder
from protocol.messages import Credit
import workers
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        frame = bytes(FrameEncoder().encode(Credit(999999, 1)))
        blob = frame * (262144 // len(frame))
        fd = workers._runtime.channel._sock.fileno()
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        written, began = 0, time.monotonic()
        try:
            while time.monotonic() - began < @SECONDS@:
                written += os.write(fd, blob)
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        return Response(str(written // len(frame)))
'''

HELLO = r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hello")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    corral = Corral(tmp_path_factory.mktemp("frame-flood") / "state").start()
    try:
        corral.deploy("flooder", FLOODER.replace("@SECONDS@", str(FLOOD_S)), namespace=None)
        corral.deploy("hello", HELLO, namespace=None)
        corral.route("flooder.localhost/*", "flooder")
        corral.route("hello.localhost/*", "hello")
        yield corral
    finally:
        corral.stop()


def test_a_child_flooding_its_channel_is_read_only_as_fast_as_its_allowance(server):
    assert server.request(host="hello.localhost").text == "hello"
    flood: dict = {}
    thread = threading.Thread(target=lambda: flood.setdefault(
        "response", server.request(host="flooder.localhost", timeout=60)))
    thread.start()
    try:
        # Another tenant is served while the flood goes on (the flooder is
        # mostly not being read: its writes block on its full socket).
        for _ in range(20):
            assert server.request(host="hello.localhost").text == "hello"
    finally:
        thread.join(60)
    response = flood["response"]
    assert response.status == 200, response
    written = int(response.text)
    # What it may get written: its allowance in hand, what time earns over
    # the flood, the answer it was sent, what its socket buffers hold, and
    # one receive's overdraft; read unthrottled, it was millions.
    allowed = BURST + RATE * FLOOD_S + PER_FRAME_SENT + 2 * 262144 // 18 + 262144 // 18
    assert written < 2 * allowed, (written, allowed)
    assert "child.frames_throttled" in server.log()
    # The flooder serves its next request as any other child does.
    assert server.request(host="hello.localhost").text == "hello"


def test_the_allowance_is_earned_by_answers_and_time():
    allowance = FrameAllowance(now=0.0)
    assert allowance.spend(BURST)  # a burst is in hand
    assert not allowance.spend(1000)  # overdrawn
    assert allowance.overdrawn(now=0.0) == pytest.approx(1000 / RATE)
    allowance.sent = 4  # four frames sent to the child: their answers are allowed
    assert allowance.overdrawn(now=0.0) == 0.0
    assert allowance.balance == 4 * PER_FRAME_SENT - 1000
    assert allowance.overdrawn(now=100.0) == 0.0  # time earns it back, never past a burst
    assert allowance.balance == BURST
