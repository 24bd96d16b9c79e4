"""Cloudflare's Rate Limiting binding (``type: "ratelimit"``, Wrangler's ``ratelimits``).

The window's arithmetic is tested on :class:`RateLimiter` with a clock the
test moves (a real minute would make the suite slow); the binding itself
over a real server, real jailed children and the real admin API: the rule
comes from the stored metadata, the key from the tenant, counters are
shared by scripts of one namespace naming one ``namespace_id`` and never
across dispatch namespaces, and bad rules are refused at deploy by name.
"""

from __future__ import annotations

import pytest

from supervisor.admin.project import load_project
from supervisor.bindings.rate_limit import RateLimiter
from tests.harness import Corral
from tests.test_project import meta, write

# -- the window -------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_calls_within_the_limit_pass_and_the_next_is_refused_uncounted() -> None:
    clock = Clock(1200.0)  # the start of a 60 s window
    limiter = RateLimiter(clock)
    assert [limiter.limit("s", "k", 3, 60) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.limit("s", "other key", 3, 60) is True
    assert limiter.limit("other scope", "k", 3, 60) is True
    # The refused calls were not counted: the next window sees 3, not 5, behind it.
    clock.now = 1260.0 + 45  # three quarters into the next window: 3 * 0.25 = 0.75 still weigh
    assert limiter.limit("s", "k", 3, 60) is True   # 0.75 + 1 <= 3
    assert limiter.limit("s", "k", 3, 60) is True   # 0.75 + 2 <= 3
    assert limiter.limit("s", "k", 3, 60) is False  # 0.75 + 3 > 3


def test_the_window_slides_over_the_previous_one() -> None:
    clock = Clock(600.0)
    limiter = RateLimiter(clock)
    assert all(limiter.limit("s", "k", 10, 10) for _ in range(10))
    clock.now = 610.0  # the next window's start: all 10 still weigh
    assert limiter.limit("s", "k", 10, 10) is False
    clock.now = 615.0  # half-way: 5 weigh
    assert [limiter.limit("s", "k", 10, 10) for _ in range(6)] == [True] * 5 + [False]
    clock.now = 640.0  # two windows on: nothing weighs
    assert all(limiter.limit("s", "k", 10, 10) for _ in range(10))


def test_mitigation_keeps_a_key_refused_after_it_went_over() -> None:
    clock = Clock(1200.0)
    limiter = RateLimiter(clock)
    assert [limiter.limit("s", "k", 1, 10, mitigation_timeout=60) for _ in range(2)] == [True, False]
    clock.now = 1250.0  # the windows alone would allow it again
    assert limiter.limit("s", "k", 1, 10, mitigation_timeout=60) is False
    clock.now = 1261.0
    assert limiter.limit("s", "k", 1, 10, mitigation_timeout=60) is True


def test_memory_is_bounded_and_old_keys_expire() -> None:
    clock = Clock(1200.0)
    limiter = RateLimiter(clock, max_keys=100)
    for i in range(250):
        limiter.limit("s", f"k{i}", 5, 10)
    assert len(limiter.scopes["s"]) == limiter.total == 100
    assert "k249" in limiter.scopes["s"] and "k0" not in limiter.scopes["s"]
    clock.now = 1300.0  # every window is over: each call drops expired keys as it goes
    for _ in range(20):
        limiter.limit("s", "fresh", 1000, 10)
    assert len(limiter.scopes["s"]) == limiter.total < 100


def test_one_scopes_new_keys_never_drop_another_scopes_counters() -> None:
    """One shared list, least recently touched first: a tenant calling with
    endless new keys pushed out another's refused key (untouched while it is
    refused), which was then allowed again, its limit switched off."""
    clock = Clock(1200.0)
    limiter = RateLimiter(clock, max_keys=100, max_keys_per_scope=60)
    assert limiter.limit("victim", "alice", 1, 60) is True
    assert limiter.limit("victim", "alice", 1, 60) is False
    for i in range(1000):
        limiter.limit("attacker", f"k{i}", 5, 60)
    assert limiter.limit("victim", "alice", 1, 60) is False
    assert len(limiter.scopes["attacker"]) == 60 and limiter.total == 61
    # Past the host's bound, the largest scope gives way.
    for scope in ("b", "c"):
        for i in range(30):
            limiter.limit(scope, f"k{i}", 5, 60)
    assert limiter.total == 100 and len(limiter.scopes["b"]) == len(limiter.scopes["c"]) == 30
    assert len(limiter.scopes["attacker"]) == 39 and limiter.limit("victim", "alice", 1, 60) is False


# -- the binding --------------------------------------------------------------------------------

LIMITED = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        key = request.headers.get("x-key")
        if request.headers.get("x-form") == "keyword":
            outcome = await self.env.LIMITER.limit(key=key)
        else:
            outcome = await self.env.LIMITER.limit({"key": key})
        try:
            await self.env.LIMITER.limit({"key": 42})
            bad_key = "accepted"
        except TypeError as exc:
            bad_key = str(exc)
        return Response.json({"success": outcome.success, "same": outcome["success"],
                              "bad_key": bad_key})
'''


def _binding(namespace_id: str = "7", **simple: object) -> dict:
    rule = {"limit": 3, "period": 60, **simple}
    return {"type": "ratelimit", "name": "LIMITER", "namespace_id": namespace_id, "simple": rule}


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    server = Corral(tmp_path_factory.mktemp("rate-limit")).start()
    try:
        server.deploy_dispatcher(namespace="default")
        server.namespace("other")
        server.deploy_dispatcher(namespace="other", name="dispatch_other", pattern="*.other.localhost/*")
        yield server
    finally:
        server.stop()


def _limit(c: Corral, host: str, key: str, form: str = "dict") -> bool:
    resp = c.request("/", host=host, headers={"x-key": key, "x-form": form})
    assert resp.status == 200, (resp, c.log())
    body = resp.json()
    assert body["success"] is body["same"]
    assert body["bad_key"].startswith("RateLimit.limit() needs a str key"), body
    return body["success"]


def test_the_stored_rule_limits_each_key(corral: Corral) -> None:
    corral.deploy("limited", LIMITED, bindings=[_binding()])
    assert [_limit(corral, "limited.localhost", "a", form) for form in ("dict", "keyword", "dict", "keyword")] \
        == [True, True, True, False]
    assert _limit(corral, "limited.localhost", "b") is True


def test_scripts_of_a_namespace_share_an_id_and_namespaces_never_do(corral: Corral) -> None:
    corral.deploy("limited_one", LIMITED, bindings=[_binding("shared")])
    corral.deploy("limited_two", LIMITED, bindings=[_binding("shared")])
    corral.deploy("limited_one", LIMITED, namespace="other", bindings=[_binding("shared")])
    assert [_limit(corral, "limited_one.localhost", "k") for _ in range(2)] == [True, True]
    assert [_limit(corral, "limited_two.localhost", "k") for _ in range(2)] == [True, False]
    # The same script name and id in another dispatch namespace: its own counters.
    assert [_limit(corral, "limited_one.other.localhost", "k") for _ in range(3)] == [True] * 3


@pytest.mark.parametrize("simple, fragment", [
    ({"period": 30}, "simple.period"),
    ({"limit": 0}, "simple.limit"),
    ({"mitigation_timeout": 30}, "mitigation_timeout must be 0, 10 or a multiple of 60"),
])
def test_a_bad_rule_is_refused_at_deploy_by_name(corral: Corral, simple: dict, fragment: str) -> None:
    resp = corral.deploy("badrule", LIMITED, bindings=[_binding(**simple)], check=False)
    assert resp.status == 400, resp.text
    assert fragment in resp.text, resp.text


def test_wrangler_ratelimits_become_bindings(tmp_path) -> None:
    write(tmp_path, {
        "wrangler.jsonc": """{
  "main": "src/entry.py",
  // Cloudflare's own example, with the id as a number as TOML users write it
  "ratelimits": [{"name": "MY_RATE_LIMITER", "namespace_id": 1001,
                  "simple": {"limit": 100, "period": 60}}],
}""",
        "src/entry.py": "",
    })
    assert meta(load_project(tmp_path))["bindings"] == [
        {"type": "ratelimit", "name": "MY_RATE_LIMITER", "namespace_id": "1001",
         "simple": {"limit": 100.0, "period": 60}},
    ]
