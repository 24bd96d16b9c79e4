"""Real framework apps through Corral's ``asgi``/``workers.wsgi`` adapters.

Tenants written as Cloudflare's Python Workers serve FastAPI, Starlette and
Flask apps with ``asgi.fetch`` / ``wsgi.fetch``; each framework comes from
PyPI through the tenant's requirement parts (one package set per framework,
resolved once for the module), and every test asserts what the framework
documents: statuses, bodies, headers (repeated ``Set-Cookie`` included),
validation errors, streaming, uploads, lifespan state, background tasks.
Django through ``workers.wsgi`` is covered by tests/test_django_cf.py.

Each of these failed before its fix: Cloudflare's ``asgi.env`` dependency
(missing); an upload past the frameworks' spool size (the spooled file
rolled over to a disk the jail does not have); ``receive`` after the last
body message (a second ``http.request``, not ``http.disconnect``); a chunked
body to Flask (no ``wsgi.input_terminated``: Werkzeug read nothing);
``PATH_INFO`` of bytes that are not UTF-8 (U+FFFD, not latin-1 per PEP
3333); a WSGI generator body (drained before the first byte went out, so an
event stream never answered).
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import pytest

from supervisor.admin import multipart
from tests.harness import Corral, Response
from tests.test_django_cf import deploy

KV = {"type": "kv_namespace", "name": "KV", "namespace_id": "framework-kv"}
D1 = {"type": "d1", "name": "DB", "id": "framework-db"}


class Reply(Response):
    """One HTTP answer with every header kept (``Set-Cookie`` repeats)."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.header_list = [(k.lower(), v) for k, v in headers]
        super().__init__(status, dict(self.header_list), body)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.header_list if k == name]

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.header_list} {self.body[:300]!r}>"


def call(c: Corral, host: str, path: str, method: str = "GET", body: bytes | str | None = None,
         headers: dict[str, str] | None = None, chunked: bool = False) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        data = body.encode() if isinstance(body, str) else body
        if chunked:
            conn.putheader("transfer-encoding", "chunked")
            conn.endheaders()
            for i in range(0, len(data or b""), 4096):
                piece = data[i:i + 4096]
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        else:
            if data is not None:
                conn.putheader("content-length", str(len(data)))
            conn.endheaders(data)
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def until(check: Any, what: str, timeout: float = 20) -> Any:
    """Poll ``check`` until it answers truthy (a background task's effect)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory):
    server = Corral(tmp_path_factory.mktemp("frameworks")).start()
    try:
        server.deploy_dispatcher()
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# FastAPI
# ---------------------------------------------------------------------------

FASTAPI_APP = '''
import json
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import (APIRouter, BackgroundTasks, Cookie, Depends, FastAPI, File, Form, Header,
                     HTTPException, Query, Request, Response, UploadFile)
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field

LIFESPAN = {"startups": 0, "shutdowns": 0}


@asynccontextmanager
async def lifespan(app):
    LIFESPAN["startups"] += 1
    yield {"greeting": "hello from lifespan"}
    LIFESPAN["shutdowns"] += 1


app = FastAPI(lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=["https://allowed.example"],
                   allow_methods=["GET", "POST", "PUT"], allow_headers=["x-custom"],
                   allow_credentials=True, expose_headers=["x-process"])


@app.middleware("http")
async def add_process_header(request: Request, call_next):
    response = await call_next(request)
    response.headers["x-process"] = "mw:" + request.url.path
    return response


class Teapot(Exception):
    def __init__(self, name: str):
        self.name = name


@app.exception_handler(Teapot)
async def teapot_handler(request: Request, exc: Teapot):
    return JSONResponse(status_code=418, content={"teapot": exc.name})


class ItemIn(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    tags: list[str] = []


class ItemOut(BaseModel):
    name: str
    price_with_tax: float


async def common(q: str | None = None, limit: int = 10):
    return {"q": q, "limit": limit}


def sync_dependency(x_token: Annotated[str | None, Header()] = None):
    if x_token == "bad":
        raise HTTPException(status_code=401, detail="bad token", headers={"WWW-Authenticate": "Bearer"})
    return x_token


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None, short: bool = False):
    return {"item_id": item_id, "q": q, "short": short}


@app.get("/users/{user}/files/{path:path}")
def read_file(user: str, path: str, n: Annotated[list[int], Query()] = []):
    return {"user": user, "path": path, "n": n}


@app.post("/items", response_model=ItemOut, status_code=201)
async def create_item(item: ItemIn):
    return {"name": item.name, "price_with_tax": round(item.price * 1.2, 2), "secret": "dropped"}


@app.get("/deps")
async def deps(commons: Annotated[dict, Depends(common)],
               token: Annotated[str | None, Depends(sync_dependency)]):
    return {**commons, "token": token}


@app.get("/env")
async def env(request: Request):
    await request.scope["env"].KV.put("k", "v1")
    db = request.scope["env"].DB
    await db.exec("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    await db.prepare("INSERT INTO t (x) VALUES (?)").bind(7).run()
    row = await db.prepare("SELECT sum(x) AS s FROM t").first()
    return {"kv": await request.scope["env"].KV.get("k"), "sum": row["s"] if row else None}


@app.get("/missing")
async def missing():
    raise HTTPException(status_code=404, detail="Item not found", headers={"X-Error": "gone"})


@app.get("/teapot")
async def teapot():
    raise Teapot("earl grey")


@app.get("/stream")
async def stream():
    async def gen():
        for i in range(5):
            yield f"chunk{i}\\n"
    return StreamingResponse(gen(), media_type="text/plain")


@app.get("/stream-sync")
def stream_sync():
    def gen():  # a plain generator: Starlette iterates it in a worker thread
        for i in range(3):
            yield b"s%d," % i
    return StreamingResponse(gen(), media_type="application/octet-stream")


ENDLESS = {"closed": 0}


@app.get("/endless")
async def endless():
    import asyncio

    async def gen():
        try:
            while True:
                yield "data: tick\\n\\n"
                await asyncio.sleep(0.05)
        finally:
            ENDLESS["closed"] += 1
    return StreamingResponse(gen(), media_type="text/event-stream")


@app.get("/endless-closed")
async def endless_closed():
    return ENDLESS


@app.get("/sse")
async def sse():
    async def events():
        for i in range(3):
            yield f"data: {i}\\n\\n"
    return StreamingResponse(events(), media_type="text/event-stream")


async def remember(key: str, value: str, env):
    await env.KV.put(key, value)


@app.post("/later/{key}")
async def later(key: str, background: BackgroundTasks, request: Request):
    background.add_task(remember, key, "done", request.scope["env"])
    return {"queued": key}


@app.get("/kv/{key}")
async def kv_get(key: str, request: Request):
    return {"value": await request.scope["env"].KV.get(key)}


@app.post("/upload")
async def upload(file: UploadFile, note: Annotated[str, Form()], more: list[UploadFile] = File(default=[])):
    data = await file.read()
    return {"filename": file.filename, "type": file.content_type, "size": len(data),
            "head": data[:4].hex(), "note": note, "more": [m.filename for m in more]}


@app.post("/form")
async def form(username: Annotated[str, Form()], age: Annotated[int, Form()]):
    return {"username": username, "age": age}


@app.get("/cookies")
async def cookies(response: Response, session: Annotated[str | None, Cookie()] = None,
                  user_agent: Annotated[str | None, Header()] = None):
    response.set_cookie("a", "1", httponly=True)
    response.set_cookie("b", "2", max_age=60, path="/x")
    response.headers["X-Custom"] = "yes"
    return {"session": session, "ua": user_agent}


@app.get("/redirect")
async def redirect():
    return RedirectResponse("/items/1", status_code=303)


@app.get("/redirect-default")
async def redirect_default():
    return RedirectResponse("/items/2")


@app.get("/lifespan")
async def lifespan_state(request: Request):
    return {"greeting": request.state.greeting, **LIFESPAN}


@app.post("/echo-size")
async def echo_size(request: Request):
    body = await request.body()
    return {"size": len(body), "last": body[-3:].decode()}


@app.get("/query-raw")
async def query_raw(request: Request):
    return {"qs": request.scope["query_string"].decode("latin-1"),
            "params": dict(request.query_params),
            "path": request.scope["path"], "raw_path": request.scope["raw_path"].decode("latin-1")}


@app.get("/scope/{rest:path}")
async def scope(request: Request):
    s = request.scope
    return {"type": s["type"], "http_version": s["http_version"], "method": s["method"],
            "scheme": s["scheme"], "path": s["path"], "root_path": s["root_path"],
            "server": list(s["server"]) if s.get("server") else None,
            "client": list(s["client"]) if s.get("client") else None,
            "has_state": "state" in s, "asgi": s["asgi"],
            "header_types": sorted({type(k).__name__ + "/" + type(v).__name__ for k, v in s["headers"]}),
            "lower": all(k == k.lower() for k, _ in s["headers"]),
            "url": str(request.url), "base_url": str(request.base_url),
            "named": str(request.url_for("read_item", item_id=5)),
            "qs_type": type(s["query_string"]).__name__}


@app.get("/crash")
async def crash():
    raise RuntimeError("unhandled on purpose")


@app.get("/source")
async def source():
    from pathlib import Path

    from fastapi.responses import FileResponse
    return FileResponse(Path(__file__), media_type="text/x-python", filename="app.py")


sub = FastAPI()


@sub.get("/where", name="where")
async def where(request: Request):
    return {"root_path": request.scope["root_path"], "path": request.scope["path"],
            "url_for": str(request.url_for("where"))}


app.mount("/sub", sub)

router = APIRouter(prefix="/v1", tags=["v1"])


@router.get("/ping")
async def ping():
    return PlainTextResponse("pong")


@router.put("/things/{thing_id}")
async def put_thing(thing_id: str, payload: dict):
    return {"thing_id": thing_id, "payload": payload}


app.include_router(router)
'''

FASTAPI_WORKER = '''
from workers import WorkerEntrypoint

from app import app


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        import asgi
        return await asgi.fetch(app, request, self.env)
'''

#: Cloudflare's ``asgi.env``: a FastAPI dependency that answers ``scope["env"]``.
ASGI_ENV_WORKER = '''
from fastapi import Depends, FastAPI
from workers import WorkerEntrypoint

import asgi

app = FastAPI()


@app.get("/")
async def root(env=asgi.env):
    await env.KV.put("from-depends", "yes")
    return {"kv": await env.KV.get("from-depends"), "is_depends": type(asgi.env).__name__}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await asgi.fetch(app, request, self.env)
'''

STARLETTE_WORKER = '''
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from workers import WorkerEntrypoint

import asgi


async def homepage(request: Request):
    return PlainTextResponse("hello starlette")


async def count(request: Request):
    total, chunks = 0, 0
    async for chunk in request.stream():
        total += len(chunk)
        chunks += 1
    return JSONResponse({"total": total, "chunks_seen": chunks > 0,
                         "method": request.method, "ctype": request.headers.get("content-type")})


async def user(request: Request):
    return JSONResponse({"name": request.path_params["name"], "q": request.query_params.getlist("q")},
                        status_code=202, headers={"x-who": request.path_params["name"]})


app = Starlette(routes=[Route("/", homepage), Route("/count", count, methods=["POST", "PUT"]),
                        Route("/u/{name}", user)])


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await asgi.fetch(app, request, self.env)
'''


@pytest.fixture(scope="module")
def fastapi_host(c: Corral) -> str:
    deploy(c, "fastapi-app", {"worker.py": FASTAPI_WORKER, "app.py": FASTAPI_APP},
           ["fastapi", "python-multipart"], [KV, D1])
    r = call(c, "fastapi-app.localhost", "/v1/ping")
    assert r.status == 200, f"{r!r}\n{c.log()}"
    return "fastapi-app.localhost"


@pytest.fixture(scope="module")
def starlette_host(c: Corral, fastapi_host: str) -> str:
    deploy(c, "starlette-app", {"worker.py": STARLETTE_WORKER}, ["fastapi", "python-multipart"])
    return "starlette-app.localhost"


def test_fastapi_path_and_query_params(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/items/42?q=hi&short=yes")
    assert r.status == 200, r
    assert r.json() == {"item_id": 42, "q": "hi", "short": True}
    assert r.headers["content-type"] == "application/json"
    r = call(c, fastapi_host, "/users/ann/files/a/b%20c.txt?n=1&n=2")
    assert r.json() == {"user": "ann", "path": "a/b c.txt", "n": [1, 2]}, r
    r = call(c, fastapi_host, "/items/abc")
    assert r.status == 422, r
    [err] = r.json()["detail"]
    assert err["loc"] == ["path", "item_id"] and err["type"] == "int_parsing", err


def test_fastapi_bodies_response_models_and_validation(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/items", "POST", json.dumps({"name": "pen", "price": 10}),
             {"content-type": "application/json"})
    assert r.status == 201, r
    assert r.json() == {"name": "pen", "price_with_tax": 12.0}  # the response model filters
    r = call(c, fastapi_host, "/items", "POST", json.dumps({"name": "", "price": -1}),
             {"content-type": "application/json"})
    assert r.status == 422, r
    errors = {tuple(e["loc"]): e["type"] for e in r.json()["detail"]}
    assert errors == {("body", "name"): "string_too_short", ("body", "price"): "greater_than"}, r
    r = call(c, fastapi_host, "/items", "POST", "{not json", {"content-type": "application/json"})
    assert r.status == 422 and r.json()["detail"][0]["type"] == "json_invalid", r
    r = call(c, fastapi_host, "/v1/things/t1", "PUT", json.dumps({"a": [1, 2]}),
             {"content-type": "application/json"})
    assert r.json() == {"thing_id": "t1", "payload": {"a": [1, 2]}}, r


def test_fastapi_dependencies_sync_and_async(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/deps?q=z&limit=3", headers={"x-token": "t0k"})
    assert r.json() == {"q": "z", "limit": 3, "token": "t0k"}, r
    r = call(c, fastapi_host, "/deps", headers={"x-token": "bad"})
    assert r.status == 401 and r.json() == {"detail": "bad token"}, r
    assert r.headers["www-authenticate"] == "Bearer"


def test_fastapi_env_bindings_from_scope(c: Corral, fastapi_host: str) -> None:
    """``request.scope["env"]``: KV and D1 bindings in a route."""
    r = call(c, fastapi_host, "/env")
    assert r.status == 200, f"{r!r}\n{c.log()}"
    assert r.json()["kv"] == "v1" and r.json()["sum"] >= 7, r


def test_fastapi_asgi_env_dependency(c: Corral, fastapi_host: str) -> None:
    """``env=asgi.env`` as Cloudflare's FastAPI examples write it (the module's
    ``__getattr__`` makes it a ``Depends``): it failed to load."""
    deploy(c, "fastapi-env", {"worker.py": ASGI_ENV_WORKER}, ["fastapi", "python-multipart"], [KV])
    r = call(c, "fastapi-env.localhost", "/")
    assert r.status == 200, f"{r!r}\n{c.log()}"
    assert r.json() == {"kv": "yes", "is_depends": "Depends"}, r


def test_fastapi_exceptions_and_handlers(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/missing")
    assert r.status == 404 and r.json() == {"detail": "Item not found"}, r
    assert r.headers["x-error"] == "gone"
    r = call(c, fastapi_host, "/teapot")
    assert r.status == 418 and r.json() == {"teapot": "earl grey"}, r
    r = call(c, fastapi_host, "/no-such-route")
    assert r.status == 404 and r.json() == {"detail": "Not Found"}, r
    r = call(c, fastapi_host, "/items", "DELETE")
    assert r.status == 405 and r.json() == {"detail": "Method Not Allowed"}, r
    assert r.headers["allow"] == "POST"


def test_fastapi_unhandled_error_and_file_response(c: Corral, fastapi_host: str) -> None:
    """Starlette's ServerErrorMiddleware answers 500 and then re-raises: the
    answer stands (the adapter logs the exception). ``FileResponse`` reads a
    bundle file (in a worker thread, as anyio does)."""
    r = call(c, fastapi_host, "/crash")
    assert r.status == 500 and r.text == "Internal Server Error", r
    r = call(c, fastapi_host, "/source")
    assert r.status == 200 and b"def source():" in r.body, r
    assert r.headers["content-disposition"] == 'attachment; filename="app.py"', r
    assert r.headers["content-type"].startswith("text/x-python"), r
    assert "etag" in r.headers and "last-modified" in r.headers, r


def test_fastapi_mounted_app_root_path_and_url_for(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/sub/where")
    assert r.status == 200, r
    out = r.json()
    assert out["root_path"] == "/sub", out
    assert out["url_for"] == "http://fastapi-app.localhost/sub/where", out


def test_fastapi_streaming_responses(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/stream")
    assert r.status == 200, r
    assert r.text == "".join(f"chunk{i}\n" for i in range(5))
    assert r.headers["content-type"].startswith("text/plain")
    r = call(c, fastapi_host, "/stream-sync")
    assert r.status == 200 and r.body == b"s0,s1,s2,", r
    r = call(c, fastapi_host, "/sse")
    assert r.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n", r
    assert r.headers["content-type"].startswith("text/event-stream")


def test_fastapi_background_tasks_run_after_the_response(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/later/job1", "POST")
    assert r.status == 200 and r.json() == {"queued": "job1"}, r
    until(lambda: call(c, fastapi_host, "/kv/job1").json()["value"] == "done", "background task")


def test_fastapi_uploads_and_forms(c: Corral, fastapi_host: str) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: past SpooledTemporaryFile's 1 MiB in memory
    ctype, body = multipart.encode([
        multipart.Part(name="file", filename="data.bin", content_type="application/octet-stream", data=big),
        multipart.Part(name="note", data="a note \u00e9".encode()),
        multipart.Part(name="more", filename="x.txt", content_type="text/plain", data=b"x"),
        multipart.Part(name="more", filename="y.txt", content_type="text/plain", data=b"y"),
    ])
    r = call(c, fastapi_host, "/upload", "POST", body, {"content-type": ctype})
    assert r.status == 200, f"{r!r}\n{c.log()}"
    assert r.json() == {"filename": "data.bin", "type": "application/octet-stream", "size": len(big),
                        "head": "00010203", "note": "a note \u00e9", "more": ["x.txt", "y.txt"]}
    r = call(c, fastapi_host, "/form", "POST", "username=ann&age=31",
             {"content-type": "application/x-www-form-urlencoded"})
    assert r.json() == {"username": "ann", "age": 31}, r
    r = call(c, fastapi_host, "/form", "POST", "username=ann",
             {"content-type": "application/x-www-form-urlencoded"})
    assert r.status == 422 and r.json()["detail"][0]["loc"] == ["body", "age"], r


def test_fastapi_cookies_and_headers(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/cookies", headers={"cookie": "session=abc; other=1", "user-agent": "ua/1"})
    assert r.status == 200 and r.json() == {"session": "abc", "ua": "ua/1"}, r
    cookies = r.all("set-cookie")
    assert len(cookies) == 2, r
    assert cookies[0].startswith("a=1;") and "HttpOnly" in cookies[0], cookies
    assert cookies[1].startswith("b=2;") and "Max-Age=60" in cookies[1] and "Path=/x" in cookies[1], cookies
    assert r.headers["x-custom"] == "yes"
    assert r.headers["x-process"] == "mw:/cookies"  # the @app.middleware("http")


def test_fastapi_redirects(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/redirect")
    assert r.status == 303 and r.headers["location"] == "/items/1", r
    r = call(c, fastapi_host, "/redirect-default")
    assert r.status == 307 and r.headers["location"] == "/items/2", r
    r = call(c, fastapi_host, "/items/")  # redirect_slashes
    assert r.status == 307 and r.headers["location"] == "http://fastapi-app.localhost/items", r


def test_fastapi_lifespan_state_reaches_requests(c: Corral, fastapi_host: str) -> None:
    """Cloudflare's adapter runs a lifespan startup before each request and its
    shutdown after it, and gives the request a copy of the lifespan state."""
    first = call(c, fastapi_host, "/lifespan").json()
    second = call(c, fastapi_host, "/lifespan").json()
    assert first["greeting"] == "hello from lifespan", first
    assert second["startups"] == first["startups"] + 1, (first, second)
    assert second["shutdowns"] >= first["shutdowns"] + 1, (first, second)


def test_fastapi_cors_and_options(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/items", "OPTIONS", headers={
        "origin": "https://allowed.example", "access-control-request-method": "POST",
        "access-control-request-headers": "x-custom"})
    assert r.status == 200 and r.text == "OK", r
    assert r.headers["access-control-allow-origin"] == "https://allowed.example"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-credentials"] == "true"
    r = call(c, fastapi_host, "/items/1", headers={"origin": "https://allowed.example"})
    assert r.headers["access-control-allow-origin"] == "https://allowed.example", r
    assert r.headers["access-control-expose-headers"] == "x-process"
    r = call(c, fastapi_host, "/items", "OPTIONS", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"})
    assert r.status == 400 and r.text == "Disallowed CORS origin", r


def test_fastapi_head_requests(c: Corral, fastapi_host: str) -> None:
    """FastAPI's routes take only the methods they declare (no implicit HEAD,
    unlike Starlette's ``Route``): 405 with ``Allow``, and no body for HEAD."""
    r = call(c, fastapi_host, "/v1/ping", "HEAD")
    assert r.status == 405 and r.body == b"" and r.headers["allow"] == "GET", r


def test_fastapi_large_and_chunked_bodies(c: Corral, fastapi_host: str) -> None:
    big = b"x" * (5 * 1024 * 1024) + b"end"
    r = call(c, fastapi_host, "/echo-size", "POST", big)
    assert r.json() == {"size": len(big), "last": "end"}, r
    r = call(c, fastapi_host, "/echo-size", "POST", big[-300_000:], chunked=True)
    assert r.json() == {"size": 300_000, "last": "end"}, r


def test_fastapi_query_strings_and_paths_as_sent(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/query-raw?a=%FF%FE&b=caf%C3%A9&c=x+y")
    assert r.status == 200, r
    out = r.json()
    assert out["qs"] == "a=%FF%FE&b=caf%C3%A9&c=x+y", out
    assert out["params"]["b"] == "caf\u00e9" and out["params"]["c"] == "x y", out
    assert out["params"]["a"] == "\ufffd\ufffd", out  # Starlette decodes UTF-8 with replace


def test_fastapi_scope_and_url_for(c: Corral, fastapi_host: str) -> None:
    r = call(c, fastapi_host, "/scope/caf%C3%A9%20x?z=1", headers={"X-Mixed-Case": "V"})
    assert r.status == 200, f"{r!r}\n{c.log()}"
    s = r.json()
    assert (s["type"], s["http_version"], s["method"], s["scheme"]) == ("http", "1.1", "GET", "http"), s
    assert s["path"] == "/scope/caf\u00e9 x" and s["root_path"] == "", s
    assert s["server"] == ["fastapi-app.localhost", 80], s
    assert s["has_state"] and s["asgi"]["version"] == "3.0", s
    assert s["header_types"] == ["bytes/bytes"] and s["lower"], s
    assert s["qs_type"] == "bytes", s
    # Starlette builds the URL from the decoded ``path`` (as under uvicorn).
    assert s["url"] == "http://fastapi-app.localhost/scope/caf\u00e9 x?z=1", s
    assert s["base_url"] == "http://fastapi-app.localhost/", s
    assert s["named"] == "http://fastapi-app.localhost/items/5", s


def test_starlette_routes_and_request_stream(c: Corral, starlette_host: str) -> None:
    r = call(c, starlette_host, "/")
    assert r.status == 200 and r.text == "hello starlette", r
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    r = call(c, starlette_host, "/u/bob?q=1&q=2")
    assert r.status == 202 and r.json() == {"name": "bob", "q": ["1", "2"]}, r
    assert r.headers["x-who"] == "bob"
    big = b"y" * (3 * 1024 * 1024 + 5)
    r = call(c, starlette_host, "/count", "POST", big, {"content-type": "application/octet-stream"})
    assert r.json() == {"total": len(big), "chunks_seen": True, "method": "POST",
                        "ctype": "application/octet-stream"}, r
    r = call(c, starlette_host, "/count", "PUT", b"abc" * 1000, chunked=True)
    assert r.json()["total"] == 3000, r
    r = call(c, starlette_host, "/count")
    assert r.status == 405 and r.text == "Method Not Allowed", r
    # Starlette's GET routes answer HEAD: the head of the GET, no body.
    r = call(c, starlette_host, "/", "HEAD")
    assert r.status == 200 and r.body == b"", r
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["content-length"] == str(len("hello starlette")), r


#: A bare ASGI app that records every message ``receive`` gives it, reading
#: once more after its response is complete (as Starlette's disconnect
#: listener and middleware do).
RAW_ASGI = '''
import json

import asgi
from workers import Response, WorkerEntrypoint

SEEN = {}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    messages = []
    while True:
        message = await receive()
        messages.append([message["type"], len(message.get("body", b"")), message.get("more_body")])
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(messages).encode()})
    after = await receive()
    SEEN[scope["path"]] = {"after": after["type"],
                           "scope": sorted(k for k in scope if k != "env"),
                           "query_string": scope["query_string"].decode("latin-1"),
                           "raw_path": scope["raw_path"].decode("latin-1"), "path": scope["path"]}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/seen"):
            return Response(json.dumps(SEEN))
        return await asgi.fetch(app, request, self.env)
'''


def test_asgi_receive_messages_and_scope_as_the_spec_has_them(c: Corral) -> None:
    """After the ``more_body: False`` message, ``receive`` answers
    ``http.disconnect`` once the response is sent (it answered a second
    empty ``http.request`` first)."""
    c.deploy("raw-asgi", RAW_ASGI)
    host = "raw-asgi.localhost"
    r = call(c, host, "/post/caf%C3%A9?x=%FF", "POST", b"z" * 200_000)
    assert r.status == 200, f"{r!r}\n{c.log()}"
    messages = r.json()
    assert all(m[0] == "http.request" for m in messages), messages
    assert sum(m[1] for m in messages) == 200_000 and messages[-1][2] is False, messages
    r = call(c, host, "/get")
    assert r.json() == [["http.request", 0, False]], r
    seen = call(c, host, "/seen").json()
    for path in ("/post/caf\u00e9", "/get"):
        assert seen[path]["after"] == "http.disconnect", seen
    post = seen["/post/caf\u00e9"]
    assert post["query_string"] == "x=%FF" and post["raw_path"] == "/post/caf%C3%A9", post
    assert {"type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string",
            "root_path", "headers", "server", "client"} <= set(post["scope"]), post


# ---------------------------------------------------------------------------
# Flask through workers.wsgi
# ---------------------------------------------------------------------------

FLASK_WORKER = '''
import io

from flask import (Flask, Response, abort, jsonify, make_response, redirect, request, send_file,
                   session, stream_with_context, url_for)
from workers import Response as WorkerResponse
from workers import WorkerEntrypoint, wsgi

app = Flask(__name__)
app.secret_key = "corral-test-secret"


@app.route("/")
def index():
    return "hello flask"


@app.route("/args")
def args():
    return jsonify(a=request.args.get("a"), many=request.args.getlist("m"), path=request.path,
                   full=request.full_path, url=request.url, host=request.host,
                   scheme=request.scheme, remote=request.remote_addr)


@app.route("/form", methods=["POST"])
def form():
    upload = request.files.get("doc")
    return jsonify(name=request.form.get("name"), tags=request.form.getlist("tag"),
                   file=upload.filename if upload else None,
                   size=len(upload.read()) if upload else 0,
                   mimetype=upload.mimetype if upload else None)


@app.route("/json", methods=["POST", "PUT"])
def json_body():
    data = request.get_json()
    return jsonify(got=data, length=request.content_length, method=request.method), 201


@app.route("/raw", methods=["POST"])
def raw():
    return jsonify(size=len(request.get_data()), length=request.content_length)


@app.route("/session/<value>")
def set_session(value):
    session["value"] = value
    return "stored"


@app.route("/session")
def get_session():
    return jsonify(value=session.get("value"))


@app.route("/made")
def made():
    response = make_response("made it", 202)
    response.headers["X-Thing"] = "1"
    response.set_cookie("one", "1")
    response.set_cookie("two", "2", httponly=True)
    return response


@app.route("/abort")
def aborting():
    abort(403)


@app.route("/teapot")
def teapot():
    abort(418, description="short and stout")


@app.errorhandler(403)
def forbidden(error):
    return jsonify(error="forbidden", code=error.code), 403


@app.errorhandler(ValueError)
def value_error(error):
    return jsonify(error=str(error)), 400


@app.route("/crash")
def crash():
    raise RuntimeError("unhandled on purpose")


@app.route("/boom")
def boom():
    raise ValueError("bad value")


@app.route("/stream")
def stream():
    prefix = request.args.get("p", "line")

    @stream_with_context
    def generate():
        for i in range(4):
            yield f"{prefix}{i}\\n"
    return Response(generate(), mimetype="text/plain")


RELEASE = None


@app.route("/live")
def live():
    """Two events, then one more only once /release is asked for: a stream
    the adapter must send as it goes (it never ends if drained first)."""
    import asyncio

    from pyodide.ffi import run_sync

    global RELEASE
    RELEASE = asyncio.Event()
    released = RELEASE

    def events():
        yield "data: one\\n\\n"
        yield "data: two\\n\\n"
        run_sync(released.wait())
        yield "data: three\\n\\n"
    return Response(events(), mimetype="text/event-stream")


@app.route("/ticks")
def ticks():
    def gen():  # blocks between chunks, as the classic Flask SSE loop does
        import time
        yield "data: first\\n\\n"
        time.sleep(1.5)
        yield "data: second\\n\\n"
    return Response(gen(), mimetype="text/event-stream")


@app.route("/release")
def release():
    RELEASE.set()
    return "released"


@app.route("/file")
def file():
    return send_file(io.BytesIO(b"\\x89PNG fake bytes"), mimetype="image/png",
                     as_attachment=True, download_name="pic.png")


@app.route("/sized")
def sized():
    def parts():
        for _ in range(10):
            yield b"0123456789" * 100
    return Response(parts(), mimetype="application/octet-stream", headers={"Content-Length": "10000"})


@app.route("/go")
def go():
    return redirect(url_for("index"))


@app.route("/p/<path:name>")
def pathy(name):
    return jsonify(name=name, path_info=request.environ["PATH_INFO"],
                   raw=request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI"))


@app.route("/environ", methods=["GET", "POST"])
def environ():
    e = request.environ
    keep = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
            "SERVER_PROTOCOL", "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_X_MIXED_CASE", "HTTP_HOST",
            "wsgi.url_scheme", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once"]
    return jsonify({k: e.get(k) for k in keep} | {"version": list(e["wsgi.version"]),
                                                   "has_env": e.get("workers.env") is not None})


def legacy(environ, start_response):
    """A WSGI app that writes through start_response's write() and has a close()."""
    write = start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "w=1"),
                                      ("Set-Cookie", "v=2")])
    write(b"written-")

    class Body:
        closed = False

        def __iter__(self):
            yield b"iterated"

        def close(self):
            CLOSED.append(True)

    return Body()


CLOSED = []


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/legacy"):
            return await wsgi.fetch(legacy, request, self.env)
        if request.url.endswith("/closed"):
            return WorkerResponse(str(len(CLOSED)))
        return await wsgi.fetch(app, request, self.env)
'''


@pytest.fixture(scope="module")
def flask_host(c: Corral) -> str:
    deploy(c, "flask-app", {"worker.py": FLASK_WORKER}, ["flask"])
    r = call(c, "flask-app.localhost", "/")
    assert r.status == 200 and r.text == "hello flask", f"{r!r}\n{c.log()}"
    return "flask-app.localhost"


def test_flask_routes_and_args(c: Corral, flask_host: str) -> None:
    r = call(c, flask_host, "/args?a=1&m=x&m=y")
    assert r.status == 200, r
    assert r.json() == {"a": "1", "many": ["x", "y"], "path": "/args", "full": "/args?a=1&m=x&m=y",
                        "url": "http://flask-app.localhost/args?a=1&m=x&m=y", "host": "flask-app.localhost",
                        "scheme": "http", "remote": r.json()["remote"]}
    assert r.headers["content-type"] == "application/json"
    r = call(c, flask_host, "/nope")
    assert r.status == 404 and b"Not Found" in r.body, r
    r = call(c, flask_host, "/form")
    assert r.status == 405 and sorted(r.headers["allow"].split(", ")) == ["OPTIONS", "POST"], r


def test_flask_form_files_and_json(c: Corral, flask_host: str) -> None:
    ctype, body = multipart.encode([
        multipart.Part(name="name", data=b"ann"),
        multipart.Part(name="tag", data=b"a"), multipart.Part(name="tag", data=b"b"),
        multipart.Part(name="doc", filename="doc.txt", content_type="text/plain", data=b"z" * 700_000),
    ])
    r = call(c, flask_host, "/form", "POST", body, {"content-type": ctype})
    assert r.json() == {"name": "ann", "tags": ["a", "b"], "file": "doc.txt", "size": 700_000,
                        "mimetype": "text/plain"}, r
    r = call(c, flask_host, "/form", "POST", "name=bo&tag=c", {"content-type": "application/x-www-form-urlencoded"})
    assert r.json() == {"name": "bo", "tags": ["c"], "file": None, "size": 0, "mimetype": None}, r
    sent = json.dumps({"x": [1, "\u00e9"]}, ensure_ascii=False).encode()
    r = call(c, flask_host, "/json", "PUT", sent, {"content-type": "application/json"})
    assert r.status == 201 and r.json() == {"got": {"x": [1, "\u00e9"]}, "length": len(sent), "method": "PUT"}, r
    r = call(c, flask_host, "/json", "POST", "{bad", {"content-type": "application/json"})
    assert r.status == 400, r


def test_flask_reads_a_chunked_body(c: Corral, flask_host: str) -> None:
    """No Content-Length: Werkzeug reads ``wsgi.input`` only when the server says
    it ends by itself (``wsgi.input_terminated``); Corral's input does."""
    r = call(c, flask_host, "/raw", "POST", b"q" * 70_000, {"content-type": "application/octet-stream"},
             chunked=True)
    assert r.status == 200 and r.json() == {"size": 70_000, "length": None}, r


def test_flask_sessions_are_signed_cookies(c: Corral, flask_host: str) -> None:
    r = call(c, flask_host, "/session/s3cret")
    assert r.status == 200 and r.text == "stored", r
    [cookie] = r.all("set-cookie")
    assert cookie.startswith("session=") and "HttpOnly" in cookie, cookie
    value = cookie.split(";")[0]
    r = call(c, flask_host, "/session", headers={"cookie": value})
    assert r.json() == {"value": "s3cret"}, r
    r = call(c, flask_host, "/session", headers={"cookie": value[:-3] + "xyz"})
    assert r.json() == {"value": None}, r  # a tampered signature is no session


def test_flask_make_response_status_headers_and_cookies(c: Corral, flask_host: str) -> None:
    r = call(c, flask_host, "/made")
    assert r.status == 202 and r.text == "made it" and r.headers["x-thing"] == "1", r
    assert [v.split(";")[0] for v in r.all("set-cookie")] == ["one=1", "two=2"], r
    r = call(c, flask_host, "/legacy")
    assert r.text == "written-iterated" and r.all("set-cookie") == ["w=1", "v=2"], r
    assert call(c, flask_host, "/closed").text == "1", "close() on the returned iterable"


def test_flask_abort_and_error_handlers(c: Corral, flask_host: str) -> None:
    r = call(c, flask_host, "/abort")
    assert r.status == 403 and r.json() == {"error": "forbidden", "code": 403}, r
    r = call(c, flask_host, "/teapot")
    assert r.status == 418 and b"short and stout" in r.body, r
    r = call(c, flask_host, "/boom")
    assert r.status == 400 and r.json() == {"error": "bad value"}, r
    r = call(c, flask_host, "/crash")  # Flask's own 500 page, the worker lives on
    assert r.status == 500 and b"Internal Server Error" in r.body, r
    assert call(c, flask_host, "/").text == "hello flask"


def test_flask_streaming_send_file_and_redirect(c: Corral, flask_host: str) -> None:
    r = call(c, flask_host, "/stream?p=L")
    assert r.status == 200 and r.text == "L0\nL1\nL2\nL3\n", r
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    r = call(c, flask_host, "/file")
    assert r.status == 200 and r.body == b"\x89PNG fake bytes", r
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"] == "attachment; filename=pic.png"
    assert r.headers["content-length"] == str(len(b"\x89PNG fake bytes"))
    r = call(c, flask_host, "/sized")  # many chunks and a declared length: answered whole
    assert r.body == b"0123456789" * 1000 and r.headers.get("content-length") == "10000", r.header_list
    r = call(c, flask_host, "/go")
    assert r.status == 302 and r.headers["location"] == "/", r
    # Werkzeug answers HEAD itself: its head, with GET's Content-Length, and no body.
    r = call(c, flask_host, "/", "HEAD")
    assert r.status == 200 and r.body == b"" and r.headers["content-type"] == "text/html; charset=utf-8", r
    assert r.headers["content-length"] == str(len(call(c, flask_host, "/").body)), r


def test_flask_generator_streams_as_it_goes(c: Corral, flask_host: str) -> None:
    """Cloudflare's adapter pulls a WSGI body as the client reads it: the
    first events arrive before the generator has finished (Corral drained it
    first, so this stream never answered)."""
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=15)
    try:
        conn.request("GET", "/live", headers={"host": flask_host})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
        seen = b""
        while seen.count(b"\n\n") < 2:
            seen += resp.read1(100)
        assert seen == b"data: one\n\ndata: two\n\n", seen
        assert call(c, flask_host, "/release").text == "released"
        assert resp.read() == b"data: three\n\n"
    finally:
        conn.close()


def _first_chunk_comes_first(c: Corral, host: str, path: str) -> None:
    """The first event arrives while the generator blocks before its second
    (it was held back until the generator ended: 1.5 s, then both at once)."""
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=15)
    try:
        conn.request("GET", path, headers={"host": host})
        resp = conn.getresponse()
        first = b""
        while b"\n\n" not in first:
            first += resp.read1(100)
        got_first = time.monotonic()
        rest = resp.read()
        waited = time.monotonic() - got_first
    finally:
        conn.close()
    assert first + rest == b"data: first\n\ndata: second\n\n", first + rest
    assert waited > 0.75, f"the first chunk came with the second ({waited:.2f} s apart, 1.5 s expected)"


def test_a_blocking_flask_generator_sends_each_chunk_as_it_is_made(c: Corral, flask_host: str) -> None:
    _first_chunk_comes_first(c, flask_host, "/ticks")


BLOCKING_ASGI = '''
import time
import asgi
from workers import WorkerEntrypoint


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": b"data: first\\n\\n", "more_body": True})
    time.sleep(1.5)  # blocks between chunks, as a sync generator Starlette iterates inline does
    await send({"type": "http.response.body", "body": b"data: second\\n\\n", "more_body": False})


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await asgi.fetch(app, request, self.env)
'''


def test_a_blocking_asgi_app_sends_each_chunk_as_it_is_made(c: Corral) -> None:
    """An ASGI body chunk waits until the runtime has taken it on (as
    Cloudflare's adapter awaits its writer): one that blocks after a send
    held that chunk back until its end. (Behind Starlette's
    BaseHTTPMiddleware, which relays chunks between tasks, a blocking
    generator still holds the chunk the relay has in hand: with no threads,
    as on Pyodide, nothing runs while it blocks.)"""
    deploy(c, "blockingasgi", {"worker.py": BLOCKING_ASGI}, [])
    _first_chunk_comes_first(c, "blockingasgi.localhost", "/")


def test_a_client_gone_mid_stream_closes_the_apps_generator(c: Corral, fastapi_host: str) -> None:
    """Cloudflare's ASGI adapter ends a stream whose reader went away: the
    app's generator is closed (here it ran on, and its sends hung)."""
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=15)
    conn.request("GET", "/endless", headers={"host": fastapi_host})
    resp = conn.getresponse()
    seen = b""
    while seen.count(b"\n\n") < 3:
        seen += resp.read1(100)
    conn.close()
    deadline = time.monotonic() + 20
    while call(c, fastapi_host, "/endless-closed").json()["closed"] < 1:
        assert time.monotonic() < deadline, "the generator was never closed"
        time.sleep(0.05)  # polling the app's own record: the close has no event the test can see


def test_flask_environ_and_paths_per_pep_3333(c: Corral, flask_host: str) -> None:
    r = call(c, flask_host, "/environ?x=%FF", "POST", "a=1",
             {"content-type": "application/x-www-form-urlencoded", "X-Mixed-Case": "v"})
    e = r.json()
    assert e == {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/environ",
                 "QUERY_STRING": "x=%FF", "SERVER_NAME": "flask-app.localhost", "SERVER_PORT": "80",
                 "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_TYPE": "application/x-www-form-urlencoded",
                 "CONTENT_LENGTH": "3", "HTTP_X_MIXED_CASE": "v", "HTTP_HOST": "flask-app.localhost",
                 "wsgi.url_scheme": "http", "wsgi.multithread": False, "wsgi.multiprocess": False,
                 "wsgi.run_once": False, "version": [1, 0], "has_env": True}, r
    r = call(c, flask_host, "/p/caf%C3%A9%20x")
    assert r.json()["name"] == "caf\u00e9 x", r
    assert r.json()["path_info"] == "/p/caf\u00c3\u00a9 x", r  # UTF-8 bytes as latin-1
    # Bytes that are not UTF-8: PATH_INFO carries them as latin-1 code points.
    r = call(c, flask_host, "/p/%FF%FE")
    assert r.status == 200, r
    assert r.json()["path_info"] == "/p/\u00ff\u00fe", r


# ---------------------------------------------------------------------------
# WebSockets through asgi.websocket
# ---------------------------------------------------------------------------

WS_WORKER = '''
import asgi
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from workers import WorkerEntrypoint

app = FastAPI()


@app.websocket("/ws")
async def talk(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_text("welcome " + websocket.query_params.get("who", "?"))
    env = websocket.scope["env"]
    try:
        while True:
            text = await websocket.receive_text()
            if text == "remember":
                await env.KV.put("said", "remembered")  # a binding, from the message's invocation
                await websocket.send_text("ok")
            elif text == "recall":
                await websocket.send_text(await env.KV.get("said") or "nothing")
            elif text == "bye":
                await websocket.close(code=1000, reason="bye to you")
                return
            else:
                await websocket.send_text("echo:" + text)
    except WebSocketDisconnect:
        await env.KV.put("left", "yes")


@app.get("/left")
async def left(request: Request):
    return {"left": await request.scope["env"].KV.get("left")}


@app.websocket("/closed")
async def closed(websocket: WebSocket):
    await websocket.close()


@app.websocket("/proto")
async def proto(websocket: WebSocket):
    await websocket.accept(subprotocol="chat", headers=[(b"x-app", b"yes")])
    await websocket.send_text("with chat")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if (request.headers.get("upgrade") or "").lower() == "websocket":
            return await asgi.websocket(app, request, self.env)
        return await asgi.fetch(app, request, self.env)
'''


def test_a_fastapi_websocket_through_asgi_websocket(c: Corral) -> None:
    """workers-py's asgi.websocket serves an app's WebSocket route; Corral
    raised NotImplementedError. Each message is handled in its own
    invocation, bindings included."""
    from wsproto.events import CloseConnection

    from tests.test_websockets import Client

    deploy(c, "fastapi-ws", {"worker.py": WS_WORKER}, ["fastapi"], [KV])
    ws = Client(c.port, "fastapi-ws.localhost", "/ws?who=ann")
    assert ws.next() == "welcome ann"
    ws.send("hi")
    assert ws.next() == "echo:hi"
    ws.send("remember")
    assert ws.next() == "ok"
    ws.send("recall")
    assert ws.next() == "remembered"
    ws.send("bye")
    close = ws.next()
    assert isinstance(close, CloseConnection) and (close.code, close.reason) == (1000, "bye to you"), close
    ws.drop()
    refused = c.raw(b"GET /closed HTTP/1.1\r\nHost: fastapi-ws.localhost\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 403"), refused[:200]
    # A client that closes: the app hears websocket.disconnect (WebSocketDisconnect).
    leaving = Client(c.port, "fastapi-ws.localhost", "/ws")
    assert leaving.next() == "welcome ?"
    leaving.close(1001, "going away")
    until(lambda: call(c, "fastapi-ws.localhost", "/left").json() == {"left": "yes"}, "the app heard the close")
    leaving.drop()
    # The subprotocol and headers the app accepts with are in the 101, as uvicorn sends them.
    chat = Client(c.port, "fastapi-ws.localhost", "/proto")
    head = chat.head.lower()
    assert "sec-websocket-protocol: chat" in head and "x-app: yes" in head, chat.head
    assert chat.next() == "with chat"
    chat.drop()
