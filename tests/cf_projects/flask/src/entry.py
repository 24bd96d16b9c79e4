from flask import Flask, request as flask_request
from workers import WorkerEntrypoint, wsgi

app = Flask(__name__)


@app.route("/")
def index():
    return {"flask": True, "method": flask_request.method}


@app.route("/missing")
def missing():
    return "nope", 404, {"x-flask": "1"}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await wsgi.fetch(app, request, self.env)
