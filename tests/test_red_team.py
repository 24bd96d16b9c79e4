"""A hostile tenant and a hostile API client against a real server (red team, session 56).

Each test attacks for real and asserts what must hold: no disclosure across
scripts, no supervisor crash, a clear error naming the problem.
"""

from __future__ import annotations

from tests.harness import Corral

CALLEE = '''
import os
from workers import WorkerEntrypoint, Response

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        here = os.path.dirname(os.path.abspath(__file__))
        if request.url.endswith("/dir"):
            os.listdir(os.path.join(here, "nope"))
        open(os.path.join(here, "missing.txt"))
        return Response("unreachable")
'''

CALLER = '''
from workers import WorkerEntrypoint, Response

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        try:
            await self.env.dispatcher.get("leaky").fetch(request)
        except Exception as e:
            return Response(type(e).__name__ + ": " + str(e))
        return Response("no error")
'''


def test_a_callees_exception_does_not_disclose_its_bundle_folder_to_its_caller(corral: Corral) -> None:
    """A callee's uncaught error crosses to its caller (SubFailed) as its name
    and message; a message naming one of the callee's files named the keyed
    folder of its bundle on the host. The state dir's part is stripped."""
    corral.deploy("leaky", CALLEE)
    corral.deploy("caller", CALLER, namespace=None, bindings=[
        {"type": "dispatch_namespace", "name": "dispatcher", "namespace": "default"}])
    corral.route("caller.localhost/*", "caller")
    for path in ("/file", "/dir"):
        r = corral.request(path, host="caller.localhost")
        assert r.status == 200, (r, corral.log())
        assert "FileNotFoundError" in r.text or "Error" in r.text, r.text
        assert "bundles" not in r.text and str(corral.state_dir) not in r.text, r.text
        assert ("missing.txt" if path == "/file" else "nope") in r.text, r.text
    assert corral.alive()


JS_STACK = '''
import js
from workers import WorkerEntrypoint, Response

def helper():
    return js.Error.new("boom").stack

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(helper())
'''


def test_a_js_errors_stack_names_the_scripts_files_by_their_project_path(corral: Corral) -> None:
    """``js.Error(...).stack`` (V8's layout, thrown on to callers and logged)
    named the host's bundle folder; it names ``worker.py`` as the stacks of
    Python exceptions do."""
    corral.deploy("jsstack", JS_STACK)
    r = corral.request("/", host="jsstack.localhost")
    assert r.status == 200, (r, corral.log())
    assert "at helper (worker.py:" in r.text, r.text
    assert "bundles" not in r.text, r.text
