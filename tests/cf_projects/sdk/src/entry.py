import json

from workers import (Blob, BlobEnding, BlobValue, Body, FetchKwargs, FormData, FormDataValue, JSBody,
                     RequestInitCfProperties, Response, WorkerEntrypoint, handler, import_from_javascript,
                     python_from_rpc, python_to_rpc, wait_until)
import workers

from helpers import shout


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = request.url.split("/", 3)[-1]
        if path.startswith("form"):
            form = await request.form_data()
            upload = form.get("file")
            return Response.json({"name": form.get("name"), "file": upload.name,
                                  "size": upload.size, "text": await upload.text()})
        if path == "sdkapi":
            # Details of the SDK's own classes, as workers-py's tests check them.
            import js
            from workers import Request, fetch
            out = {}
            r = Response("x", status=201, headers={"flag": True, "n": 7})
            r.headers.append("x-dup", "a")
            r.headers.append("x-dup", "b")
            r.headers.append("set-cookie", "a=1")
            r.headers.append("set-cookie", "b=2")
            out["headers"] = [r.headers.get("flag"), r.headers.get("n"), r.headers.get_all("x-dup"),
                              r.headers.get_all("set-cookie")]
            out["repr"] = [repr(Request("https://test.com", method="POST")), repr(Response.json([1]))]
            replaced = r.replace_body("other")
            out["replaced"] = [replaced.status, await replaced.text(), replaced.headers.get("flag")]
            typed = Blob(["test"], content_type="application/json")
            out["blob"] = [typed.content_type, typed.js_object.type, Blob(typed).content_type,
                           Blob([typed]).content_type, (await js.Blob.new(["j"], {"type": "t/x"}).text())]
            form = FormData(js.FormData.new())
            form["k"] = Blob(["v"])
            out["form"] = await form["k"].text()
            try:
                await fetch("https://example.com/", {"headers": {}})
            except TypeError as e:
                out["jsism"] = str(e)

            class Odd:
                pass
            try:
                Response(Odd())
            except TypeError as e:
                out["unsupported"] = str(e)
            form.append("k", "again")
            out["form_keys"] = list(form.keys())
            return Response.json(out)
        if path == "cf":
            # What a self-hosted edge knows: the request's own; the rest is None, not an error.
            from workers import Request
            built = Request("https://example.com/", cf={"cacheTtl": 5})
            if request.cf is None:  # a user worker: Workers for Platforms' untrusted mode
                return Response.json({"untrusted": True, "built": built.cf})
            return Response.json({"protocol": request.cf.httpProtocol, "country": request.cf.country,
                                  "encoding": request.cf.get("clientAcceptEncoding"),
                                  "clone": request.clone().cf.httpProtocol, "built": built.cf,
                                  "plain": Request("https://example.com/").cf})
        if path == "status":
            return Response("gone", status=410)
        if path == "redirect":
            return Response.redirect("https://example.com/next", 301)
        if path == "blob":
            # The SDK's type-hint names import, and annotate, as there.
            parts: list[BlobValue] = ["<b>", b"bold</b>"]
            kwargs: FetchKwargs = {"method": "GET", "cf": RequestInitCfProperties(cacheTtl=5)}
            hints = (Body, JSBody, FormDataValue, kwargs["cf"]["cacheTtl"] == 5)
            return Response(Blob(parts, type="text/html", endings=BlobEnding.TRANSPARENT),
                            headers={"x-hints": str(all(hints))})
        if path == "sendform":
            form = FormData({"a": "1"})
            return Response(form)
        limits = python_from_rpc({"max": 3, "nested": {"x": None}})
        cf = import_from_javascript("cloudflare:workers")
        ran = []

        async def later():
            ran.append(1)
        wait_until(later())
        self.ctx.waitUntil(later())
        return Response.json({
            "greeting": shout(self.env.GREETING),
            "limits_max": self.env.LIMITS["max"],
            "attr": limits.max, "nested": limits.nested.x,
            "rpc": python_to_rpc({"a": [1, 2]}),
            "env_same": cf.env.GREETING == workers.env.GREETING,
            "method": request.method == "GET",
            "status_text": Response("x", status=404).status_text,
            "handler": handler(len)([1]),
        }, headers={"x-sdk": "1"})
