"""Shared fixtures: real Corral servers started for the tests."""

from __future__ import annotations

import pytest

from tests.harness import Corral


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory):
    """One server per test module, with the bundled dispatcher routed on */*."""
    server = Corral(tmp_path_factory.mktemp("corral")).start()
    try:  # a set-up that fails must not leave the server running
        server.deploy_dispatcher()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def collector():
    """An HTTP sink on 127.0.0.1 that tail workers post their events to
    (tests.test_observability.Collector), one per test module."""
    from tests.test_observability import Collector

    sink = Collector()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def upstream():
    """A local HTTP origin (tests.upstream.Upstream), one per test module."""
    from tests.upstream import Upstream

    with Upstream() as up:
        yield up


@pytest.fixture
def fresh_corral(tmp_path):
    """A server of its own, for tests that kill or restart things."""
    server = Corral(tmp_path / "state").start()
    try:
        server.deploy_dispatcher()
        yield server
    finally:
        server.stop()
