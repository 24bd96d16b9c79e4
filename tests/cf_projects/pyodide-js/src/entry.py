from js import JSON, Object, Response, Uint8Array, console
from pyodide.ffi import IN_BROWSER, JsException, JsPromise, JsProxy, create_proxy, jsnull, to_js, to_py
from pyodide.webloop import WebLoop

# As workers-py's own test workers patch Pyodide's loop: accepted, changes nothing.
WebLoop.shutdown_asyncgens = lambda *args: None
from workers import Response as PyResponse
from workers import WorkerEntrypoint


async def on_fetch(request, env):
    console.log("from console.log")
    path = request.url.split("/", 3)[-1]
    if path == "notfound":
        try:
            await env.dispatcher_missing.fetch(request)
        except AttributeError:
            pass
        try:
            import js
            js.WebAssembly
        except AttributeError as exc:
            return Response.new(str(exc), status=501)
    if path == "bytes":
        # Cloudflare's image example answers Response(to_js(png_bytes).buffer).
        typed = to_js(b"\x89PNG\r\n\x1a\n" + bytes(Uint8Array.new([1, 2, 3])))
        return PyResponse(typed.buffer, headers={"content-type": "image/png",
                                                 "x-lengths": f"{typed.length} {typed.buffer.byteLength}"})
    data = to_js({"a": 1, "b": [1, 2]}, dict_converter=Object.fromEntries)
    parsed = JSON.parse('{"x": {"y": null}}')
    proxy = create_proxy(lambda: "called")
    out = {
        "a": data.a,
        "y_is_none": parsed.x.y is None,
        "roundtrip": to_py(data),
        "proxy": proxy(),
        "jsnull": bool(jsnull),
        "isproxy": isinstance(data, JsProxy),
        "jsexc": issubclass(JsException, Exception),
        "ffi_types": [IN_BROWSER, isinstance(data, JsPromise), issubclass(JsPromise, JsProxy)],
    }
    proxy.destroy()
    return Response.new(JSON.stringify(out), headers=to_js({"content-type": "application/json"}))
