from js import Object
from pyodide.ffi import create_proxy, to_js
from workers import WorkerEntrypoint

# A worker written as Cloudflare's Dynamic Workers example writes it: the
# dynamic worker's code comes from a callback, as a JS object.
SOURCE = """
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("Hello from a dynamically-loaded Python Worker! " + request.url)
"""


def _worker_code():
    return to_js({"compatibilityDate": "2026-04-01", "compatibilityFlags": ["python_workers"],
                  "mainModule": "entry.py", "modules": {"entry.py": SOURCE}},
                 dict_converter=Object.fromEntries)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        worker = self.env.LOADER.get("hello-python-v1", create_proxy(_worker_code))
        return await worker.getEntrypoint().fetch(request._js_request)
