"""Client for Corral's admin REST API over its unix socket (SPEC.md section 2)."""
from __future__ import annotations

import http.client
import json
import socket
import uuid


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class AdminError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def multipart(parts: list[tuple[str, str, bytes, str]]) -> tuple[bytes, str]:
    """parts: (name, filename, content, content type) -> (body, content-type header)."""
    boundary = "corralbench" + uuid.uuid4().hex
    out = []
    for name, filename, content, ctype in parts:
        out.append(f"--{boundary}\r\n".encode())
        disp = f'form-data; name="{name}"'
        if filename:
            disp += f'; filename="{filename}"'
        out.append(f"Content-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n".encode())
        out.append(content)
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


class Admin:
    def __init__(self, sock_path: str, account: str = "local"):
        self.sock_path = sock_path
        self.base = f"/accounts/{account}/workers"
        self.conn: UnixHTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def call(self, method: str, path: str, body: bytes | None = None,
             ctype: str | None = None) -> tuple[int, dict | str]:
        headers = {"Host": "localhost"}
        if body is not None:
            headers["Content-Type"] = ctype or "application/json"
            headers["Content-Length"] = str(len(body))
        for attempt in range(2):
            if self.conn is None:
                self.conn = UnixHTTPConnection(self.sock_path)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                break
            except (http.client.HTTPException, ConnectionError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw.decode(errors="replace")
        return resp.status, data

    @staticmethod
    def message(data) -> str:
        if isinstance(data, dict):
            errs = data.get("errors") or []
            if errs:
                return "; ".join(str(e.get("message", e)) for e in errs)
            return json.dumps(data)[:200]
        return str(data)[:200]

    def create_namespace(self, name: str) -> None:
        st, data = self.call("POST", f"{self.base}/dispatch/namespaces",
                             json.dumps({"name": name}).encode())
        if st not in (200, 201, 409):
            raise AdminError(st, self.message(data))

    def _upload(self, path: str, main: str, source: bytes, bindings: list | None) -> None:
        meta = {"main_module": main}
        if bindings:
            meta["bindings"] = bindings
        body, ctype = multipart([
            ("metadata", "", json.dumps(meta).encode(), "application/json"),
            (main, main, source, "text/x-python"),
        ])
        st, data = self.call("PUT", path, body, ctype)
        if st not in (200, 201):
            raise AdminError(st, self.message(data))

    def deploy_user(self, ns: str, name: str, source: bytes, bindings: list | None = None) -> None:
        self._upload(f"{self.base}/dispatch/namespaces/{ns}/scripts/{name}",
                     "worker.py", source, bindings)

    def deploy_platform(self, name: str, source: bytes, bindings: list) -> None:
        self._upload(f"{self.base}/scripts/{name}", "worker.py", source, bindings)

    def add_route(self, pattern: str, script: str) -> str | None:
        """Returns the route's id (None if the answer has none)."""
        st, data = self.call("POST", f"{self.base}/routes",
                             json.dumps({"pattern": pattern, "script": script}).encode())
        if st not in (200, 201, 409):
            raise AdminError(st, self.message(data))
        result = data.get("result") if isinstance(data, dict) else None
        return str(result["id"]) if isinstance(result, dict) and "id" in result else None

    def metrics(self) -> dict[str, float]:
        """GET /metrics (Prometheus text) as {metric name: value}; labels are kept in the name."""
        st, data = self.call("GET", "/metrics")
        if st != 200:
            raise AdminError(st, self.message(data))
        out: dict[str, float] = {}
        for line in str(data).splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name.strip()] = float(value)
            except ValueError:
                pass
        return out

    def delete_route(self, route_id: str) -> None:
        st, data = self.call("DELETE", f"{self.base}/routes/{route_id}")
        if st not in (200, 204):
            raise AdminError(st, self.message(data))
