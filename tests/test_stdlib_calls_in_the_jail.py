"""Everyday standard-library calls that touch the system, inside the jail.

An audit of the calls tenants commonly make found some that failed badly in
the jail (a ``KeyError`` from ``getpass.getuser()``, ``io.UnsupportedOperation``
from ``faulthandler.enable()``, no ``C.UTF-8`` locale, stack garbage from
``os.sysconf("SC_PHYS_PAGES")``, an ``os.system()`` that reported a command
that never ran, the host's name in ``platform.node()``). What the tenant may
know about itself, or is pure computation, works; the rest fails with a
clear ``OSError`` and the child lives on.

Real server, real jailed children; each tenant makes the calls itself and
reports what it got (see tests.test_jail's prelude).
"""

from __future__ import annotations

import pytest

from tests.harness import Corral
from tests.test_jail import (
    EROFS,
    assert_healthy,
    call,
    corral_with_control,
    denied,
    worker,
)


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory):
    with corral_with_control(tmp_path_factory.mktemp("stdlib_calls"), config="log_invocations = true") as server:
        yield server


# ---------------------------------------------------------------------------
# 1. the child's own user: a fixed sandbox account, nothing of the host's
# ---------------------------------------------------------------------------

ACCOUNTS = worker('''
    import getpass, grp, pathlib, pwd

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            me = pwd.getpwuid(os.getuid())
            return Response.json({
                "getuser": attempt(getpass.getuser),
                "passwd": [me.pw_name, me.pw_uid == os.getuid(), me.pw_gid == os.getgid(), me.pw_dir],
                "by_name": attempt(lambda: pwd.getpwnam("worker") == me),
                "all": attempt(lambda: [e.pw_name for e in pwd.getpwall()]),
                "group": attempt(lambda: tuple(grp.getgrgid(os.getgid()))[::2]),
                "group_by_name": attempt(lambda: grp.getgrnam("worker").gr_gid == os.getgid()),
                "groups": attempt(lambda: [g.gr_name for g in grp.getgrall()]),
                "root": attempt(pwd.getpwnam, "root"),
                "uid0": attempt(pwd.getpwuid, 0),
                "root_group": attempt(grp.getgrnam, "root"),
                "bad_type": attempt(pwd.getpwuid, "x"),
                "expanduser": attempt(os.path.expanduser, "~/notes.txt"),
                "home": attempt(lambda: str(pathlib.Path.home())),
                "write_home": attempt(lambda: open(os.path.expanduser("~/notes.txt"), "w")),
            })
''')


def test_the_child_is_a_fixed_sandbox_user(c: Corral) -> None:
    c.deploy("accounts", ACCOUNTS)
    out = call(c, "accounts")
    assert out["getuser"] == {"ok": True, "value": "'worker'"}, out["getuser"]
    assert out["passwd"] == ["worker", True, True, "/"], out["passwd"]
    assert out["by_name"] == {"ok": True, "value": "True"}, out["by_name"]
    assert out["all"] == {"ok": True, "value": "['worker']"}, out["all"]
    assert out["group"]["ok"] is True and out["group"]["value"].startswith("('worker', "), out["group"]
    assert out["group_by_name"] == {"ok": True, "value": "True"}, out["group_by_name"]
    assert out["groups"] == {"ok": True, "value": "['worker']"}, out["groups"]
    # Nothing of the host's accounts.
    for key in ("root", "uid0", "root_group"):
        denied(out[key], "KeyError", errno=None)
    denied(out["bad_type"], "TypeError", errno=None)
    # Home is the read-only root: it resolves, and a write there fails.
    assert out["expanduser"] == {"ok": True, "value": "'/notes.txt'"}, out["expanduser"]
    assert out["home"] == {"ok": True, "value": "'/'"}, out["home"]
    denied(out["write_home"], "OSError", errno=EROFS)
    assert_healthy(c)
