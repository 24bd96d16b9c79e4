"""A child's last words (``Channel.flush_now``) reach a supervisor that waits
for the child to read first.

The supervisor stops reading a child with more than ``OUT_HIGH_WATER`` queued
for it until the child has taken some. A child out of memory sends its
failure with ``flush_now`` and exits; with its own sends backed up too, it
waited there for its wall limit, reading nothing. This drives the child's real
channel over a real socket pair against a peer that behaves as the
supervisor then does: it reads nothing until it has sent what it holds.
"""

from __future__ import annotations

import asyncio
import socket
import threading

from protocol.messages import Log
from sandbox.channel import Channel


def test_last_words_get_through_to_a_peer_that_reads_only_once_it_has_sent() -> None:
    ours, theirs = socket.socketpair()
    loop = asyncio.new_event_loop()
    try:
        ours.setblocking(False)
        channel = Channel(ours, loop, lambda message: None, lambda: None)
        # The child's own sends, backed up: 4 MB of log lines queued.
        line = "x" * 60_000
        for _ in range(70):
            channel.send(Log(1, "log", line, 0.0))
        queued = channel.backlog
        assert queued > 4_000_000

        received = bytearray()
        pending = b"y" * (8 << 20)  # what the "supervisor" holds for the child

        def supervisor() -> None:
            theirs.settimeout(60)
            theirs.sendall(pending)  # reads nothing until this is sent
            while len(received) < queued:
                chunk = theirs.recv(1 << 20)
                if not chunk:
                    return
                received.extend(chunk)

        peer = threading.Thread(target=supervisor, daemon=True)
        peer.start()
        child = threading.Thread(target=channel.flush_now, daemon=True)
        child.start()
        child.join(timeout=30)
        assert not child.is_alive(), "flush_now waited for a peer that waits for it"
        peer.join(timeout=30)
        assert len(received) == queued and channel.backlog == 0
    finally:
        ours.close()
        theirs.close()
        loop.close()
