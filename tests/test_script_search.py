"""``client.workers.scripts.search`` (``GET .../workers/scripts-search``), as
Cloudflare's official SDK calls it, against a real `corral serve`."""

from __future__ import annotations

import cloudflare
import pytest

from tests.harness import Corral, cloudflare_sdk

CODE = '''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("ok")
'''


@pytest.fixture(scope="module")
def cf(tmp_path_factory):
    corral = Corral(tmp_path_factory.mktemp("search")).start()
    client = cloudflare_sdk(corral)
    for name in ("beta", "alpha-web", "alpha-api"):
        corral.deploy(name, CODE, namespace=None)
    corral.deploy("alpha-tenant", CODE, namespace="default")  # a user worker: not a platform script
    corral.deploy("beta", CODE, namespace=None)  # modified last
    yield client
    client.close()
    corral.stop()


def test_the_sdk_searches_the_platforms_scripts(cf):
    found = cf.workers.scripts.search(account_id="local", name="alpha")
    assert [s.script_name for s in found] == ["alpha-api", "alpha-web"]
    assert found[0].id == "alpha-api" and found[0].created_on <= found[0].modified_on
    assert [s.script_name for s in cf.workers.scripts.search(account_id="local", id="beta")] == ["beta"]
    by_change = cf.workers.scripts.search(account_id="local", order_by="modified_on")
    assert [s.script_name for s in by_change] == ["alpha-web", "alpha-api", "beta"]
    assert [s.script_name for s in cf.workers.scripts.search(account_id="local", page=2, per_page=2)] == ["beta"]
    assert cf.workers.scripts.search(account_id="local", name="gamma") == []
    with pytest.raises(cloudflare.BadRequestError, match="order_by"):
        cf.workers.scripts.search(account_id="local", order_by="size")  # type: ignore[arg-type]
