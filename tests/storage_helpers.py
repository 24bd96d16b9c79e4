"""Shared pieces of the storage tests: a dispatcher that picks the namespace
and limits from headers, and a tenant that runs the test's code.

The tenant ("eval tenant") runs the request body as the body of
``async def _run(env)`` and answers ``{"ok": result}`` or, when it raised,
``{"error": class name, "name": e.name, "message": ..., "js": isinstance
of pyodide.ffi.JsException}``: each test states the operation it checks in
a few lines of tenant code, run in a real jailed child.
"""

from __future__ import annotations

import json
from typing import Any

from tests.harness import Corral

DISPATCHER = r'''
import json
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        host = request.headers.get("host", "")
        name = host.split(":")[0].split(".")[0]
        ns = request.headers.get("x-ns") or "default"
        binding = self.env.dispatcher if ns == "default" else self.env.other
        limits = json.loads(request.headers.get("x-limits") or "null")
        options = {"limits": limits} if limits else None
        try:
            return await binding.get(name, options=options).fetch(request)
        except Exception as e:
            return Response.json({"dispatch_error": str(e)}, status=502)
'''

EVAL_TENANT = r'''
import json
from workers import Response, WorkerEntrypoint
from pyodide.ffi import JsException
from js import caches


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        code = await request.text()
        scope = {"caches": caches, "JsException": JsException, "Response": Response}
        source = "async def _run(env):\n" + "\n".join("    " + l for l in code.splitlines())
        exec(compile(source, "<test>", "exec"), scope)
        try:
            return Response.json({"ok": await scope["_run"](self.env)})
        except Exception as e:
            return Response.json({"error": type(e).__name__, "name": getattr(e, "name", None),
                                  "message": getattr(e, "message", str(e)), "str": str(e),
                                  "js": isinstance(e, JsException)})
'''


def start(state_dir, config: str = "") -> Corral:
    path = state_dir / "storage-test.toml"
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(config)
    server = Corral(state_dir, extra_args=["--config", str(path)]).start()
    server.namespace("default")
    server.namespace("other")
    server.deploy_dispatcher(DISPATCHER, extra_bindings=[
        {"type": "dispatch_namespace", "name": "other", "namespace": "other"}])
    return server


def deploy(server: Corral, name: str, bindings: list[dict], *, namespace: str = "default",
           tags: list[str] | None = None) -> None:
    server.deploy(name, EVAL_TENANT, namespace=namespace, bindings=bindings, tags=tags)


def run(server: Corral, script: str, code: str, *, namespace: str = "default",
        limits: dict | None = None) -> Any:
    headers = {"x-ns": namespace}
    if limits:
        headers["x-limits"] = json.dumps(limits)
    response = server.request("/", host=f"{script}.localhost", method="POST", body=code,
                              headers=headers)
    assert response.status == 200, (response.status, response.body[:2000], server.log()[-3000:])
    return response.json()


def ok(server: Corral, script: str, code: str, **kw: Any) -> Any:
    result = run(server, script, code, **kw)
    assert "ok" in result, result
    return result["ok"]


def fails(server: Corral, script: str, code: str, **kw: Any) -> dict:
    result = run(server, script, code, **kw)
    assert "error" in result, result
    return result


KV = {"type": "kv_namespace", "name": "KV", "namespace_id": "kv-1"}
DB = {"type": "d1", "name": "DB", "id": "db-1"}
BUCKET = {"type": "r2_bucket", "name": "BUCKET", "bucket_name": "bucket-1"}
ALL = [KV, DB, BUCKET]
