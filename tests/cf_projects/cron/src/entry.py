from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("cron worker")

    async def scheduled(self, controller, env, ctx):
        print(f"scheduled {controller.cron} at {int(controller.scheduledTime)}")
        if controller.cron == "0 3 * * MON":
            raise RuntimeError("monday job failed")
