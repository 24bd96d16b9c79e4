"""Frame decoders share their msgpack decoder per message type, never their buffers.

The supervisor keeps one FrameDecoder per child and a child builds its own
from the zygote's: the msgspec decoder inside is built once per process
(protocol.framing._msgpack_decoder), so that children do not copy the pages
a fresh one touches. What each channel has half received must stay its own.
"""

from __future__ import annotations

import pytest

from protocol.framing import FrameEncoder, ProtocolError, child_decoder, supervisor_decoder
from protocol.messages import PROTOCOL_VERSION, Cancel, Hello


def test_decoders_of_one_type_share_the_msgpack_decoder_and_not_the_type_of_another() -> None:
    assert child_decoder()._decoder is child_decoder()._decoder
    assert supervisor_decoder()._decoder is supervisor_decoder()._decoder
    assert child_decoder()._decoder is not supervisor_decoder()._decoder


def test_a_partial_frame_stays_with_the_decoder_it_was_fed_to() -> None:
    encoder = FrameEncoder()
    first, second = encoder.encode(Hello(PROTOCOL_VERSION, 101)), encoder.encode(Hello(PROTOCOL_VERSION, 202))
    one, two = supervisor_decoder(), supervisor_decoder()
    assert one.feed(first[:5]) == []
    assert two.feed(second) == [Hello(PROTOCOL_VERSION, 202)]
    assert one.buffered == 5 and two.buffered == 0
    assert one.feed(first[5:]) == [Hello(PROTOCOL_VERSION, 101)]


def test_a_broken_stream_does_not_break_another_decoder_of_the_same_type() -> None:
    broken, fine = child_decoder(), child_decoder()
    with pytest.raises(ProtocolError, match="exceeds"):
        broken.feed(b"\xff\xff\xff\xff" + b"x" * 8)
    assert fine.feed(FrameEncoder().encode(Cancel(7))) == [Cancel(7)]
