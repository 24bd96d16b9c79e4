from workers import Request, Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = "/" + request.url.split("/", 3)[-1]
        if path.startswith("/api/asset"):
            # The worker asks for its own assets.
            inner = Request(request.url.replace("/api/asset", "/app.js"))
            response = await self.env.ASSETS.fetch(inner)
            return Response(await response.text(), status=response.status,
                            headers={"x-from": "env.ASSETS", "x-type": response.headers.get("content-type")})
        if path.startswith("/api/about"):
            # A URL, not a Request: fetch's default redirect mode, "follow".
            manual = path.endswith("manual")
            response = await self.env.ASSETS.fetch("https://assets.local/about.html",
                                                   redirect="manual" if manual else None)
            return Response(await response.text(), status=response.status,
                            headers={"x-url": response.url, "x-redirected": str(response.redirected),
                                     "x-location": response.headers.get("location") or ""})
        return Response(f"worker {path}", headers={"x-from": "worker"})
