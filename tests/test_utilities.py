"""``adduser`` and ``adddomain``: the manual's flags, PROTOCOL.md's exit codes."""

from __future__ import annotations

import os

from extremail import auth
from harness import ServerProcess, free_port, run_tool


def tool(server: ServerProcess, name: str, *args: str, login: str = "system",
         port: int | None = None):
    return run_tool(server.base, name, "-h", "127.0.0.1", "-p", str(port or server.remt_port),
                    "-l", login, *args)


def user_records(server: ServerProcess) -> list[list[str]]:
    with open(server.path("data", "user_data"), encoding="utf-8") as handle:
        return [line.split("\t") for line in handle.read().splitlines()
                if line and not line.startswith("#")]


def test_adddomain_and_adduser(server: ServerProcess) -> None:
    result = tool(server, "adddomain", "-d", "acme.test")
    assert (result.returncode, result.stdout) == (0, "+OK domain acme.test added\n")
    password = 'we ird "pass" \\ word'
    result = tool(server, "adduser", "-u", "mick", "-d", "acme.test", "-w", password)
    assert (result.returncode, result.stdout) == (0, "+OK user mick@acme.test added\n")
    (record,) = user_records(server)
    assert record[:2] == ["mick", "acme.test"] and auth.verify_password(password, record[3])
    assert password not in server.log_text()


def test_refusals_exit_1_with_the_reason(server: ServerProcess) -> None:
    assert tool(server, "adddomain", "-d", "acme.test").returncode == 0
    result = tool(server, "adddomain", "-d", "acme.test")
    assert (result.returncode, result.stdout) == (1, "-ERR domain acme.test already exists\n")
    result = tool(server, "adduser", "-u", "mick", "-d", "none.test", "-w", "x")
    assert (result.returncode, result.stdout) == (1, "-ERR domain none.test does not exist\n")
    result = tool(server, "adduser", "-u", "../mick", "-d", "acme.test", "-w", "x")
    assert result.returncode == 1 and result.stdout.startswith("-ERR NAME: bad user name")
    result = tool(server, "adddomain", "-d", "other.test", login="wrong")
    assert (result.returncode, result.stdout) == (1, "-ERR login failed\n")
    assert not os.path.exists(server.path("data", "user_data"))  # nothing was written


def test_nothing_listening_exits_2(server: ServerProcess) -> None:
    result = tool(server, "adddomain", "-d", "acme.test", port=free_port())
    assert result.returncode == 2 and "cannot connect" in result.stderr


def test_missing_flags_are_a_usage_error(server: ServerProcess) -> None:
    result = run_tool(server.base, "adduser", "-l", "system", "-d", "acme.test")
    assert result.returncode == 2 and "-u" in result.stderr
