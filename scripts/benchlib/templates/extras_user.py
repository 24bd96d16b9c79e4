import os

from workers import Response, WorkerEntrypoint, fetch

# Filled in by scripts/benchlib/corral_extras.py: the local upstream's URL.
UPSTREAM = "@UPSTREAM@"


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = request.url
        if url.endswith("/fetch"):
            r = await fetch(UPSTREAM)
            await r.text()
            return Response(str(r.status))
        if url.endswith("/pid"):
            return Response(str(os.getpid()))
        if url.endswith("/spin"):
            # a tight loop that tries to outlive its end: SIGKILL cannot be caught
            try:
                while True:
                    pass
            except BaseException:
                while True:
                    pass
        return Response("200")
