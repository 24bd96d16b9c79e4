"""A bare ASGI app (no framework) and a bare WSGI app, through workers.asgi / workers.wsgi."""
from workers import WorkerEntrypoint

import asgi  # the top-level alias some projects import
from workers import wsgi

STARTS = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                STARTS.append(1)
                scope["state"]["ready"] = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": f"chunk{i};".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"set-cookie", b"a=1"),
                            (b"set-cookie", b"b=2")]})
    text = (f'{{"who": "{scope["env"].WHO}", "path": "{scope["path"]}", "query": '
            f'"{scope["query_string"].decode()}", "body": "{body.decode()}", '
            f'"ready": {str(scope["state"]["ready"]).lower()}, "starts": {len(STARTS)}}}')
    await send({"type": "http.response.body", "body": text.encode()})


def wsgi_app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    data = environ["wsgi.input"].read(length) if length else b""
    start_response("202 Accepted", [("content-type", "text/plain"), ("x-who", environ["workers.env"].WHO)])
    return [b"wsgi ", environ["PATH_INFO"].encode(), b" ", data]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.split("?")[0].endswith("/wsgi"):
            return await wsgi.fetch(wsgi_app, request, self.env)
        return await asgi.fetch(app, request, self.env)
