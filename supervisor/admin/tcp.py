"""The optional TCP admin listener, for a platform's control plane on another host.

Every request needs ``Authorization: Bearer <API token>`` (see
:mod:`supervisor.admin.tokens`), except the asset blob upload, which carries
its upload session's token there instead, and the two URLs whose random id
is their credential, as Cloudflare's are: a D1 export's download and a live
tail's WebSocket (``wrangler tail``, :mod:`supervisor.observability.tail_sessions`).
With ``tls_cert`` and ``tls_key`` configured it speaks TLS only.

Admin traffic is a few requests a second at most, so this is a small h11
loop over trio streams, bounded like the unix socket (one request at a
time per connection, a body limit, a header timeout), not the ingress server.
"""

from __future__ import annotations

import http
import ssl
from typing import Any

import h11
import trio

from supervisor.admin.api import AdminAPI
from supervisor.admin.errors import status_and_code
from supervisor.admin.render import envelope
from supervisor.admin.router import api_segments
from supervisor.admin.tokens import ASSET_UPLOADER, DOWNLOADER, Principal, is_download, is_import_upload
from supervisor.edge.client_ip import parse_address
from supervisor.errors import Invalid, NotFound, Unauthorized, Unavailable
from supervisor.log import error, log, warn
from supervisor.observability.tail_sessions import SOCKET_SUFFIX, TailSessions

MAX_BODY = 64 * 2**20
HEADER_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 60.0
MAX_TOKEN_LENGTH = 256


def tail_socket_id(target: str) -> str | None:
    """The tail id of ``[/client/v4]/accounts/{a}/workers/tails/{id}/ws``, else None."""
    segments = api_segments(target)
    if len(segments) == 6 and segments[0] == "accounts" and segments[2:4] == ["workers", "tails"] \
            and segments[5] == SOCKET_SUFFIX:
        return segments[4]
    return None


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


#: Statuses with a standard reason phrase.
_KNOWN_STATUSES = frozenset(s.value for s in http.HTTPStatus)

class AdminTCP:
    def __init__(self, api: AdminAPI, context: ssl.SSLContext | None, tails: TailSessions | None = None) -> None:
        self.api = api
        self.context = context
        #: Live tails' sockets (``wrangler tail``), served here after an upgrade.
        self.tails = tails

    async def listen(self, host: str, port: int) -> list[Any]:
        """Bind the listeners (OSError: the address is taken or unknown)."""
        listeners: list[Any] = await trio.open_tcp_listeners(port, host=host)
        if self.context is not None:
            listeners = [trio.SSLListener(tcp, self.context, https_compatible=True) for tcp in listeners]
        return listeners

    async def serve(self, listeners: list[Any], task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        bound = listeners[0].socket.getsockname() if self.context is None \
            else listeners[0].transport_listener.socket.getsockname()
        log("admin.tcp_listening", address=f"{bound[0]}:{bound[1]}", tls=self.context is not None)
        task_status.started(bound)
        await trio.serve_listeners(self._connection, listeners)

    async def principal(self, target: str, headers: list[tuple[bytes, bytes]]) -> Principal:
        path = target.split("?", 1)[0].rstrip("/")
        if path.endswith("/workers/assets/upload"):
            return ASSET_UPLOADER
        if is_download(path) or is_import_upload(path):
            return DOWNLOADER
        auth = next((v for k, v in headers if k.lower() == b"authorization"), b"").decode("latin-1")
        secret = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not secret or len(secret) > MAX_TOKEN_LENGTH:
            raise Unauthorized("the TCP admin API needs 'Authorization: Bearer <token>' "
                               "(create one on the host with `corral token create`)")
        info = await trio.to_thread.run_sync(self.api.store.lookup_token, secret)
        if info is None:
            raise Unauthorized("unknown API token: it may have been deleted (see `corral token ls` on the host)")
        return Principal(token=info)

    async def _connection(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                request = None
                body = bytearray()
                timeout = IDLE_TIMEOUT_S
                with trio.move_on_after(timeout) as scope:
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            data = await stream.receive_some(65536)
                            conn.receive_data(data)
                            if request is None and data:
                                scope.deadline = min(scope.deadline, trio.current_time() + HEADER_TIMEOUT_S)
                            continue
                        if isinstance(event, h11.Request):
                            request = event
                        elif isinstance(event, h11.Data):
                            body += event.data
                            if len(body) > MAX_BODY:
                                await self._send(stream, conn, *envelope(413, None, errors=[
                                    {"code": 10027, "message": f"request body over {MAX_BODY} bytes"}]))
                                return
                        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                            break
                if scope.cancelled_caught or request is None:
                    return
                target = request.target.decode("latin-1")
                headers = list(request.headers)
                tail_id = tail_socket_id(target) if request.method == b"GET" else None
                if tail_id is not None and self.tails is not None:
                    await self._tail_socket(stream, conn, tail_id, headers)
                    return
                try:
                    principal = await self.principal(target, headers)
                except Unauthorized as exc:
                    status, code, message = status_and_code(exc)
                    warn("admin.tcp_unauthorized", path=target[:200])
                    await self._send(stream, conn, *envelope(status, None, errors=[{"code": code, "message": message}]))
                else:
                    status, out_headers, payload = await self.api.handle(
                        request.method, target, headers, bytes(body), principal, _peer_ip(stream))
                    await self._send(stream, conn, status, out_headers, payload)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError,
                h11.LocalProtocolError):
            pass
        except Exception as exc:  # noqa: BLE001 - the last line of defence, as the ingress has
            # This task runs in serve_listeners' nursery: whatever escaped it
            # ended the whole supervisor. A wrangler tail client that stopped
            # reading and then pinged did (tests/test_hostile_admin_inputs.py).
            error("admin.tcp_connection_error", exc_info=exc)
        finally:
            await trio.aclose_forcefully(stream)

    async def _tail_socket(self, stream: trio.abc.Stream, conn: h11.Connection, tail_id: str,
                           headers: list[tuple[bytes, bytes]]) -> None:
        """A live tail's WebSocket: its URL's random id is its credential, as
        on Cloudflare (wrangler sends no token there)."""
        assert self.tails is not None

        async def send_head(status: int, head: list[tuple[bytes, bytes]]) -> None:
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=status, headers=head)))

        try:
            await self.tails.serve(tail_id, {k.lower(): v for k, v in headers}, stream, send_head)
        except (Invalid, NotFound, Unavailable) as exc:
            status, code, message = status_and_code(exc)
            warn("admin.tail_socket_refused", reason=message)
            await self._send(stream, conn, *envelope(status, None, errors=[{"code": code, "message": message}]))

    @staticmethod
    async def _send(stream: trio.abc.Stream, conn: h11.Connection, status: int,
                    headers: list[tuple[bytes, bytes]], payload: bytes) -> None:
        headers = [*headers, (b"content-length", str(len(payload)).encode())]
        # The standard reason phrase: clients quote it ("404: Not Found" in wrangler's errors).
        reason = http.HTTPStatus(status).phrase.encode() if status in _KNOWN_STATUSES else b""
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
        data += conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage())
        await stream.send_all(data)


def _peer_ip(stream: trio.abc.Stream) -> str:
    """The client's IP address (under TLS too), or "" when it cannot be had."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    sock = getattr(stream, "socket", None)
    try:
        peer = sock.getpeername() if sock is not None else None
    except OSError:
        return ""
    address = parse_address(peer[0]) if isinstance(peer, tuple) else None
    return "" if address is None else str(address)
