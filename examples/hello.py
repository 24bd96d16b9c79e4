"""A user worker: answers with a greeting and echoes what it was asked."""
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        greeting = getattr(self.env, "GREETING", "Hello")
        return Response(f"{greeting} from Corral! You asked for {request.method} {request.url}\n")
