from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        name = request.headers.get("host", "").split(".")[0]
        try:
            return await self.env.dispatcher.get(name).fetch(request)
        except Exception as e:
            if str(e).startswith("Worker not found"):
                return Response("no such worker", status=404)
            raise
