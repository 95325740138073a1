"""Fixtures: a running server in a temporary base directory on free loopback ports."""

from __future__ import annotations

import pytest

from harness import ServerProcess


@pytest.fixture
def make_server(tmp_path):
    """Factory: ``make_server(**settings)`` starts a server; all are stopped at the end."""
    started: list[ServerProcess] = []

    def make(start: bool = True, **settings: str) -> ServerProcess:
        server = ServerProcess(str(tmp_path / f"base{len(started)}"), **settings)
        started.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in started:
        if server.proc is not None:
            server.stop()


@pytest.fixture
def server(make_server) -> ServerProcess:
    return make_server()
