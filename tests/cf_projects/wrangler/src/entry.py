from pathlib import Path

from workers import Response, WorkerEntrypoint

import lib.util as util


class Default(WorkerEntrypoint):
    async def fetch(self):
        # Declares no request: Cloudflare calls it with none.
        # Files beside the code travel with it (Wrangler's default module rules).
        here = Path(__file__).parent
        return Response.json({"host": self.env.API_HOST, "retries": self.env.RETRIES,
                              "root": util.ROOT, "page": (here / "page.html").read_text(),
                              "query": (here / "queries" / "one.sql").read_text()})
