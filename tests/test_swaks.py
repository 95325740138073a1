"""Interoperability: Debian's swaks sends to the server (TOOLS.md)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import smtpwire
from smtpwire import messages, new_messages

SWAKS = shutil.which("swaks")
pytestmark = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")


@pytest.fixture(scope="module")
def mx(tmp_path_factory):
    server = smtpwire.start(str(tmp_path_factory.mktemp("swaks")))
    yield server
    server.stop()


def swaks(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SWAKS, "-s", "127.0.0.1", "-p", str(server.smtp_port), "--helo",
                           "client.test", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("extra", [[], ["--pipeline"]])
def test_swaks_delivers(mx, extra):
    before = messages(mx)
    result = swaks(mx, "-f", "a@x.test", "-t", "mick@acme.test", "--header",
                   f"Subject: swaks {extra}", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    new = new_messages(mx, before)
    assert f"Subject: swaks {extra}".encode() in new[0]
    if extra:
        assert "PIPELINING" in result.stdout


def test_swaks_rejected_recipient(mx):
    result = swaks(mx, "-f", "a@x.test", "-t", "nobody@acme.test")
    assert result.returncode == 24, result.stdout
    assert "550 5.1.1" in result.stdout
