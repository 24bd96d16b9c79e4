"""The bundled dispatch worker: the subdomain names the user worker.

`curl -H 'Host: hello.localhost' localhost:8080` runs the user worker `hello`
of the dispatch namespace bound as `env.dispatcher` (namespace `default`).
A platform's own dispatcher would authenticate and look up metadata here.
"""
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        host = request.headers.get("host", "")
        name = host.split(":")[0].split(".")[0]
        try:
            return await self.env.dispatcher.get(name).fetch(request)
        except Exception as e:
            if str(e).startswith("Worker not found"):
                return Response(f"No worker named {name!r}\n", status=404)
            raise
