from workers import Response, WorkerEntrypoint

import lib.util as util


class Default(WorkerEntrypoint):
    async def fetch(self):
        # Declares no request: Cloudflare calls it with none.
        return Response.json({"host": self.env.API_HOST, "retries": self.env.RETRIES,
                              "root": util.ROOT})
