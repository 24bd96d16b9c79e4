"""What every ``corral`` command shares: the admin client, API paths, output.

Apart from :mod:`supervisor.cli` so that the command modules beside it
(:mod:`supervisor.cli_deploy`, :mod:`supervisor.cli_access`,
:mod:`supervisor.cli_versions`) import it without importing the CLI itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import stat
import urllib.parse
from typing import Any

ACCOUNT = "local"
API = f"/accounts/{ACCOUNT}/workers"
DEFAULT_SOCKET = "./.corral/admin.sock"
_TIMEOUT_S = 300.0  # a deploy waits for the script to load in a sandbox


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over an AF_UNIX stream socket."""

    def __init__(self, socket_path: str, timeout: float = _TIMEOUT_S) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _not_a_socket(path: str) -> bool:
    """The path is there and is something else (a file, a folder): connect()
    says only "Connection refused", as it does for a socket no one serves."""
    try:
        return not stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class ApiCallError(Exception):
    """The call failed: an error envelope, or no supervisor to talk to."""


class AdminClient:
    """Calls the admin API and unwraps the envelope."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def call(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Returns ``(result, result_info)``; raises :class:`ApiCallError`."""
        conn = UnixHTTPConnection(self.socket_path)
        headers = dict(headers or {})
        if content_type:
            headers["content-type"] = content_type
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if _not_a_socket(self.socket_path):
                raise ApiCallError(f"cannot reach the supervisor at {self.socket_path}: it is not a socket "
                                   "(set --socket or CORRAL_ADMIN_SOCKET to the admin socket of "
                                   "`corral serve`, STATE_DIR/admin.sock by default)") from None
            raise ApiCallError(
                f"cannot reach the supervisor at {self.socket_path}: {exc.strerror} "
                "(is `corral serve` running? set --socket or CORRAL_ADMIN_SOCKET)"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise ApiCallError(f"admin socket {self.socket_path}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        try:
            envelope = json.loads(payload)
        except ValueError:
            raise ApiCallError(
                f"{method} {path}: HTTP {response.status} with a non-JSON body: {payload[:200]!r}"
            ) from None
        if not isinstance(envelope, dict) or not envelope.get("success"):
            errors = envelope.get("errors") if isinstance(envelope, dict) else None
            messages = [f"{e.get('message')} (code {e.get('code')})" for e in errors or [] if isinstance(e, dict)]
            raise ApiCallError("; ".join(messages) or f"{method} {path}: HTTP {response.status}")
        return envelope.get("result"), envelope.get("result_info") or {}

    def json(self, method: str, path: str, data: Any) -> Any:
        return self.call(method, path, json.dumps(data).encode(), "application/json")[0]


# -- paths -------------------------------------------------------------------


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _scripts_path(namespace: str | None, name: str | None = None) -> str:
    base = f"{API}/dispatch/namespaces/{_q(namespace)}/scripts" if namespace else f"{API}/scripts"
    return f"{base}/{_q(name)}" if name is not None else base


# -- output ------------------------------------------------------------------


def _table(rows: list[list[str]], header: list[str]) -> None:
    """A human table (rich, borderless); printed now, so _emit gets None."""
    from supervisor.cli_output import table

    table(rows, header)


def _emit(args: argparse.Namespace, result: Any, human: str | None) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
    elif human is not None:
        print(human)


def _emit_table(args: argparse.Namespace, result: Any, rows: list[list[str]], header: list[str]) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _table(rows, header)


