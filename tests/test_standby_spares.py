"""After a burst of first requests the pool keeps standby spares for the next one.

The rate that sizes the spares (``spares_for``) falls by half a second after
a burst ends; its peak (``DecayingPeak``) stays, and ``pool.standby_s``
seconds of it are kept ready (plan rule 5). A real server and real forks:
24 first requests from 8 connections. Without standby no more than 11
spares can be there at any time (a rate of 24 cold starts is under 17 a
second: 3 spares, plus one per waiting request), so 12 are there only if
standby made them.
"""

from __future__ import annotations

import threading
import time

from tests.harness import Corral
from tests.test_spare_wait import TENANT, spares

BURST = 24
CONNECTIONS = 8
CEILING = 12


def test_after_a_burst_the_pool_tops_its_spares_up_to_the_standby_target(tmp_path) -> None:
    config = f"[pool]\nspares = 2\nmax_spares = {CEILING}\nstandby_s = 5\n"
    server = Corral(tmp_path / "state", config=config).start()
    try:
        names = [f"s{i}" for i in range(BURST)]
        for name in names:
            server.deploy(name, TENANT, namespace=None)
            server.route(f"{name}.localhost/*", name)
        todo = iter(names)
        lock = threading.Lock()
        answers: list[int] = []

        def connection() -> None:
            while True:
                with lock:
                    name = next(todo, None)
                if name is None:
                    return
                answers.append(server.request("/", host=f"{name}.localhost").status)

        threads = [threading.Thread(target=connection) for _ in range(CONNECTIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [200] * BURST, (answers, server.log())
        end = time.monotonic() + 30
        while spares(server) < CEILING and time.monotonic() < end:
            time.sleep(0.05)
        assert spares(server) == CEILING, server.log()
    finally:
        server.stop()
