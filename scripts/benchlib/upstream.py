"""A tiny keep-alive HTTP/1.1 upstream for the brokered-fetch figures.

    python upstream.py PORT

Listens on 127.0.0.1:PORT, one thread per connection, and answers every
request with `200 ok` (Content-Length: 2) in a single send, TCP_NODELAY set,
keeping the connection open unless the client asks to close it. Raw sockets
and a fixed answer keep its own cost small and constant, so a difference
between a direct request and one brokered by Corral is Corral's.
"""
from __future__ import annotations

import socket
import sys
import threading

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
            b"\r\nok")
RESPONSE_CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                  b"Connection: close\r\n\r\nok")
MAX_HEAD = 64 * 1024


def _content_length(head: bytes) -> tuple[int, bool, bool]:
    """(body length, chunked, wants close) from a request head."""
    clen = 0
    chunked = False
    lines = head.split(b"\r\n")
    close = lines[0].rstrip().endswith(b"HTTP/1.0")
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        v = v.strip().lower()
        if k == b"content-length":
            clen = int(v)
        elif k == b"transfer-encoding" and b"chunked" in v:
            chunked = True
        elif k == b"connection":
            close = v == b"close"
    return clen, chunked, close


def _skip_chunked(conn: socket.socket, buf: bytes) -> bytes:
    while True:
        while b"\r\n" not in buf:
            d = conn.recv(65536)
            if not d:
                raise ConnectionResetError
            buf += d
        size_line, _, buf = buf.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(buf) < size + 2:
            d = conn.recv(65536)
            if not d:
                raise ConnectionResetError
            buf += d
        buf = buf[size + 2:]
        if size == 0:
            return buf


def serve_conn(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                if len(buf) > MAX_HEAD:
                    return
                d = conn.recv(65536)
                if not d:
                    return
                buf += d
            head, _, buf = buf.partition(b"\r\n\r\n")
            clen, chunked, close = _content_length(head)
            if chunked:
                buf = _skip_chunked(conn, buf)
            else:
                while len(buf) < clen:
                    d = conn.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[clen:]
            conn.sendall(RESPONSE_CLOSE if close else RESPONSE)
            if close:
                return
    except (OSError, ValueError):
        return
    finally:
        conn.close()


def main() -> None:
    port = int(sys.argv[1])
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(1024)
    while True:
        conn, _ = ls.accept()
        threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
