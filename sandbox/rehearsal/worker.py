# The script the runtime rehearses with (sandbox.warmup): a bundle of the
# runtime's own, read from the file view like a tenant's.
import json

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        body = await request.text()
        print("warm", request.method, request.url, len(body), json.dumps(body)[:0])
        return Response.json({"ok": True, "agent": request.headers.get("user-agent")},
                             headers={"x-warm": self.env.WARM})
