"""The README's example user worker: D1, KV, a var, a secret and a cron."""

from urllib.parse import urlsplit

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlsplit(request.url).path
        if path.startswith("/items/"):
            item = path.removeprefix("/items/")
            row = await self.env.DB.prepare("SELECT id, name FROM items WHERE id = ?").bind(item).first()
            if row is None:
                return Response.json({"error": f"no item {item!r}"}, status=404)
            return Response.json({"item": {"id": row["id"], "name": row["name"]}, "hi": self.env.GREETING})
        last_run = await self.env.KV.get("last-run")
        has_key = getattr(self.env, "API_KEY", None) is not None
        return Response.json({"hi": self.env.GREETING, "last_cron_run": last_run, "api_key_set": has_key})

    async def scheduled(self, controller, env, ctx):
        await env.KV.put("last-run", str(controller.scheduledTime))
