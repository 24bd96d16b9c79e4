"""The floor: a bare trio + h11 keep-alive "hello" server.

    python bare_h11.py PORT

Answers every request with 200 "hello". It does the least a trio+h11 HTTP
ingress has to do (parse, answer, keep the connection), so its figures bound
what any Python trio+h11 front end can reach on this machine.
"""
from __future__ import annotations

import sys

import h11
import trio

BODY = b"hello"
HEADERS = [("content-type", "text/plain"), ("content-length", str(len(BODY)))]
MAX_RECV = 65536


async def handle(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                # b"" (EOF) makes h11 answer ConnectionClosed or raise
                conn.receive_data(await stream.receive_some(MAX_RECV))
                continue
            if isinstance(event, h11.Request):
                # drain the request body, if any
                while True:
                    e = conn.next_event()
                    if e is h11.NEED_DATA:
                        data = await stream.receive_some(MAX_RECV)
                        conn.receive_data(data)
                        if not data:
                            return
                        continue
                    if isinstance(e, h11.EndOfMessage):
                        break
                out = conn.send(h11.Response(status_code=200, headers=HEADERS))
                out += conn.send(h11.Data(data=BODY))
                out += conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await stream.aclose()


async def main(port: int) -> None:
    await trio.serve_tcp(handle, port, host="127.0.0.1", backlog=1024)


if __name__ == "__main__":
    try:
        trio.run(main, int(sys.argv[1]))
    except KeyboardInterrupt:
        pass
