import httpx
import requests
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        target = request.headers.get("x-target")
        path = request.url.split("/", 3)[-1]
        if path == "requests":
            r = requests.get(target + "/echo/requests")
            return Response(f"{r.status_code} {r.json()['path']}")
        if path == "httpx":
            with httpx.Client() as client:
                r = client.get(target + "/echo/httpx")
            return Response(f"{r.status_code} {r.json()['path']}")
        async with httpx.AsyncClient() as client:
            r = await client.get(target + "/echo/async")
        return Response(f"{r.status_code} {r.json()['path']}")
