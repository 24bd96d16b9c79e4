from workers import WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await fetch(request)
