import json
import time

from workers import Response, WorkerEntrypoint

# Set by scripts/benchlib/corral_extras.py (it rewrites this line): None, or
# the outbound worker's parameters, e.g. {"customer": "x"}.
OUTBOUND = None


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        name = request.headers.get("host", "").split(".")[0]
        options = {}
        if OUTBOUND is not None:
            options["outbound"] = OUTBOUND
        cpu = request.headers.get("x-cpu-ms")
        if cpu:
            options["limits"] = {"cpuMs": json.loads(cpu)}
        started = time.perf_counter()
        try:
            return await self.env.dispatcher.get(name, options=options or None).fetch(request)
        except Exception as e:
            caught_at = time.monotonic()  # CLOCK_MONOTONIC, shared with the bench outside the jail
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            error = getattr(e, "name", None) or type(e).__name__
            return Response.json(
                {"error": error, "message": str(e)[:300], "elapsed_ms": elapsed_ms,
                 "caught_at": caught_at},
                status=503 if error == "exceededCpu" else 502)
