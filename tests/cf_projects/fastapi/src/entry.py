from workers import WorkerEntrypoint
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()


@app.get("/")
async def root():
    return {"message": "Hello, World!"}


@app.get("/env")
async def env(req: Request):
    return {"message": req.scope["env"].MESSAGE if hasattr(req.scope["env"], "MESSAGE") else "none"}


@app.get("/sync")
def sync_endpoint():
    return {"sync": True}


@app.get("/teapot")
async def teapot():
    return JSONResponse({"tea": True}, status_code=418, headers={"x-tea": "earl grey"})


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        import asgi
        return await asgi.fetch(app, request.js_object, self.env)
