"""The configuration file and hand-edited data files, through ``smtpd start`` and SIGHUP.

PROTOCOL.md: eXtremail.conf holds ``NAME=value`` lines; an unknown name or a bad value
stops ``smtpd start`` with a message naming the line, and exit status 1.  Data files
(DESIGN.md "Storage", store.py) are tab-separated records; SIGHUP reloads them and a file
that cannot be parsed keeps its previous contents (the log names the file and line).

Every case here either refuses with one short line naming the file, the line and the
parameter, or starts with the value it was given: never a traceback, never a silently
wrong value.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket

import pytest

from extremail import config
from harness import ServerProcess, run_cli, wait_until

USER_LINE = "{name}\tacme.test\t\t\t0\t\t\t0\t0"  # name domain dir password quota fwd copy in out


@pytest.fixture
def base(tmp_path):
    """A configured base directory (free loopback ports); whatever starts there is stopped."""
    server = ServerProcess(str(tmp_path / "base"))
    yield server
    if os.path.exists(server.path("data", "pid")):
        run_cli(server.base, "stop")


def conf_path(server: ServerProcess) -> str:
    return server.path("conf", "eXtremail.conf")


def write_conf(server: ServerProcess, extra: bytes, before: bytes = b"") -> int:
    """The harness's settings (but those ``extra`` sets) with ``extra`` appended (``before``
    prepended); returns the number of the first line of ``extra``."""
    good = "".join(f"{k}={v}\n" for k, v in server.settings.items()
                   if f"{k}=".encode() not in extra).encode()
    with open(conf_path(server), "wb") as handle:
        handle.write(before + good + extra)
    return before.count(b"\n") + good.count(b"\n") + 1


def start_refused(server: ServerProcess) -> str:
    """``smtpd start`` must refuse: exit 1, one short line, nothing running.  Its stderr."""
    result = run_cli(server.base, "start", timeout=60)
    if result.returncode == 0:
        run_cli(server.base, "stop")
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr[:500])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    with pytest.raises(OSError):  # nothing was left listening
        socket.create_connection(("127.0.0.1", server.remt_port), timeout=2).close()
    return result.stderr


def one_clear_line(stderr: str, line: int, words: str) -> None:
    assert stderr.count("\n") == 1, stderr[:600]
    assert len(stderr) < 400, f"{len(stderr)} characters: {stderr[:300]!r}..."
    assert all(ch >= " " for ch in stderr.rstrip("\n")), repr(stderr[:300])
    assert f"eXtremail.conf:{line}:" in stderr, stderr[:300]
    assert words in stderr, stderr[:300]


def smtp_greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.makefile("rb").readline()


# ---------------------------------------------------------------- eXtremail.conf: refusals
@pytest.mark.parametrize("extra, words", [
    (b"NO_SUCH_PARAMETER=1\n", "NO_SUCH_PARAMETER"),
    (b"CFG_LOG_LEVEL=3\nCFG_LOG_LEVEL=4\n", "CFG_LOG_LEVEL"),  # the duplicate is the 2nd line
    (b"CFG_LOG_LEVEL 3\n", "NAME=value"),
    (b"QUEUE_SMTP=ten\n", "QUEUE_SMTP"),
    (b"TIMEOUT_POP3=-5\n", "TIMEOUT_POP3"),
    (b"CFG_MAX_MAIL_SIZE=-1\n", "CFG_MAX_MAIL_SIZE"),
    (b"PORT_IMAP=99999999999999999999\n", "PORT_IMAP"),
    (b"CFG_NUM_QUEUE=1e3\n", "CFG_NUM_QUEUE"),
    (b"CFG_NUM_QUEUE=0x10\n", "CFG_NUM_QUEUE"),
    (b"CFG_ANTI_RELY=\n", "CFG_ANTI_RELY"),
    (b"CFG_BIND=localhost\n", "CFG_BIND"),
    (b"CFG_LOCALIP=127.0.0.1,10.0.0.0/40\n", "CFG_LOCALIP"),
    (b"CFG_SMART_HOST=relay.test:0\n", "CFG_SMART_HOST"),
    (b"X" * 100_000 + b"=1\n", "unknown parameter"),
])
def test_a_bad_line_stops_start_naming_file_line_and_parameter(base, extra, words):
    line = write_conf(base, extra) + (1 if b"CFG_LOG_LEVEL=4" in extra else 0)
    one_clear_line(start_refused(base), line, words)


def test_crlf_line_ends_are_read_like_lf(base):
    write_conf(base, b"CFG_HOSTNAME=crlf.local.test\n")
    with open(conf_path(base), "rb") as handle:
        text = handle.read()
    with open(conf_path(base), "wb") as handle:
        handle.write(text.replace(b"\n", b"\r\n"))
    result = run_cli(base.base, "start")
    assert result.returncode == 0, result.stderr
    assert b"crlf.local.test" in smtp_greeting(base.smtp_port)  # not "crlf.local.test\r"
    assert run_cli(base.base, "stop").returncode == 0


def test_a_byte_order_mark_is_skipped_or_refused_naming_line_1(base):
    write_conf(base, b"", before=b"\xef\xbb\xbf")
    result = run_cli(base.base, "start")
    if result.returncode == 0:  # the BOM was skipped: the first parameter took effect
        assert smtp_greeting(base.smtp_port).startswith(b"220 ")
        assert run_cli(base.base, "stop").returncode == 0
    else:
        assert result.returncode == 1 and "eXtremail.conf:1:" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_an_empty_file_or_only_comments_means_every_default(tmp_path):
    defaults = config.load(str(tmp_path / "missing"), str(tmp_path)).text
    for name, content in (("empty", b""), ("comments", b"# nothing\r\n\r\n   \n#PORT_SMTP=1\n")):
        path = tmp_path / name
        path.write_bytes(content)
        assert config.load(str(path), str(tmp_path)).text == defaults


def test_values_are_stripped_of_surrounding_blanks(tmp_path):
    path = tmp_path / "c.conf"
    path.write_bytes(b"  PORT_SMTP = 2525 \t\nCFG_HOSTNAME=\tmx.test  \n")
    cfg = config.load(str(path), str(tmp_path))
    assert cfg.PORT_SMTP == 2525 and cfg.hostname == "mx.test"


# ---------------------------------------------------------------- eXtremail.conf: bugs
def test_a_non_utf8_byte_is_refused_naming_the_line(base):
    line = write_conf(base, "CFG_HOSTNAME=mx.b\xfccher.test\n".encode("latin-1"))
    one_clear_line(start_refused(base), line, "CFG_HOSTNAME")


def test_a_form_feed_does_not_shift_line_numbers(base):
    line = write_conf(base, b"# ---- page two ----\x0c\nPORT_SMTP=twenty\n")
    one_clear_line(start_refused(base), line + 1, "PORT_SMTP")


def test_a_huge_value_gives_a_short_error(base):
    line = write_conf(base, b"TIMEOUT_POP3=" + b"9" * 100_000 + b"\n")
    one_clear_line(start_refused(base), line, "TIMEOUT_POP3")


def test_a_control_character_in_a_value_is_not_echoed_raw(base):
    line = write_conf(base, b"CFG_HOSTNAME=mx\x1b[2Jtest\n")
    one_clear_line(start_refused(base), line, "CFG_HOSTNAME")


def test_an_empty_path_is_refused_naming_the_line(base):
    line = write_conf(base, b"FILE_USER_DATA=\n")
    one_clear_line(start_refused(base), line, "FILE_USER_DATA")


@pytest.mark.parametrize("value", [b"mx local test", b"a" * 100_000])
def test_a_host_name_with_spaces_or_of_100_kb_is_refused(base, value):
    line = write_conf(base, b"CFG_HOSTNAME=" + value + b"\n")
    one_clear_line(start_refused(base), line, "CFG_HOSTNAME")


@pytest.mark.parametrize("value", [b"a..b", b"-bad-.test"])
def test_a_local_domain_that_is_not_a_domain_is_refused(base, value):
    line = write_conf(base, b"CFG_LOCALDOMAIN=" + value + b"\n")
    one_clear_line(start_refused(base), line, "CFG_LOCALDOMAIN")


@pytest.mark.parametrize("value", ["1_0", "+10", "\u0661\u0660"])
def test_a_number_is_ascii_digits_only(base, value):
    line = write_conf(base, f"QUEUE_SMTP={value}\n".encode())
    one_clear_line(start_refused(base), line, "QUEUE_SMTP")


# ---------------------------------------------------------------- data files at start
def write_data(server: ServerProcess, name: str, lines: list[str] | bytes) -> str:
    path = server.path("data", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def send(server: ServerProcess, rcpt: str, subject: str) -> dict:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
        return client.sendmail("", [rcpt], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def in_maildir(server: ServerProcess, user: str, subject: str) -> bool:
    new = os.path.join(server.maildir(user, "acme.test"), "new")
    if not os.path.isdir(new):
        return False
    for name in os.listdir(new):
        with open(os.path.join(new, name), "rb") as handle:
            if f"Subject: {subject}\n".encode() in handle.read():
                return True
    return False


def test_start_with_a_broken_user_file_refuses_or_keeps_the_good_users(make_server):
    server = make_server(start=False)
    write_data(server, "domain_data", ["acme.test\t0\t0\t0\t0\t\t\t\t0"])
    write_data(server, "user_data", [USER_LINE.format(name="mick"), "broken line"])
    result = run_cli(server.base, "start")
    try:
        if result.returncode == 1:  # refused: the message names the file and line
            assert "user_data:2" in result.stderr, result.stderr
            return
        assert result.returncode == 0, result.stderr
        assert send(server, "mick@acme.test", "after-start") == {}
        wait_until(lambda: in_maildir(server, "mick", "after-start"), 10, "the message")
    finally:
        if result.returncode == 0:
            run_cli(server.base, "stop")


# ---------------------------------------------------------------- data files and SIGHUP
@pytest.fixture
def running(make_server):
    server = make_server()
    server.setup_mail({"acme.test": {"mick": "secret"}})
    return server


def reload_and_wait(server: ServerProcess) -> None:
    count = server.log_text().count("SIGHUP: data files reloaded")
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: server.log_text().count("SIGHUP: data files reloaded") > count, 10,
               "the reload")


def mick_still_works(server: ServerProcess, subject: str) -> None:
    assert send(server, "mick@acme.test", subject) == {}
    wait_until(lambda: in_maildir(server, "mick", subject), 10, "the message")
    import poplib
    client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    client.user("mick@acme.test")
    client.pass_("secret")
    client.quit()


@pytest.mark.parametrize("bad, words", [
    ("only\ttwo", "expected 9 fields, found 2"),
    ("too\tmany\t\t\t0\t\t\t0\t0\textra", "expected 9 fields, found 10"),
    (USER_LINE.format(name="ann").replace("\t0\t\t\t0", "\tten\t\t\t0"), "not a number"),
    (USER_LINE.format(name="a/b"), "bad user name"),
    (USER_LINE.format(name=".."), "bad user name"),
    (USER_LINE.format(name="../../etc"), "bad user name"),
    (USER_LINE.format(name="an\x00n"), "bad user name"),
    (USER_LINE.format(name="ann").replace("acme.test", "acme.test/.."), "bad domain"),
    ("x" * 100_000, "expected 9 fields, found 1"),
])
def test_sighup_with_a_broken_user_file_keeps_the_previous_users(running, bad, words):
    path = running.path("data", "user_data")
    with open(path, "rb") as handle:
        before = handle.read()
    with open(path, "ab") as handle:
        handle.write(bad.encode() + b"\n")
    line = before.count(b"\n") + 1
    reload_and_wait(running)
    log = running.log_text()
    assert "data file not loaded, previous contents kept" in log
    assert f"user_data:{line}:" in log and words in log, log[-1500:]
    assert len(log.splitlines()[-1]) < 1000
    admin = running.admin()
    assert admin.listing("USER LIST ALL")[1] == ["mick@acme.test"]
    admin.close()
    mick_still_works(running, "after-bad-reload")
    assert "Traceback" not in running.log_text()


def test_sighup_with_a_crlf_user_file_reads_the_same_users(running):
    path = running.path("data", "user_data")
    with open(path, "rb") as handle:
        text = handle.read()
    with open(path, "wb") as handle:
        handle.write(text.replace(b"\n", b"\r\n"))
    reload_and_wait(running)
    admin = running.admin()
    rows = admin.listing("USER LIST NAME=mick DOMAIN=acme.test")[1]
    admin.close()
    assert "MaxOutMailSize:\t0" in rows, rows
    mick_still_works(running, "after-crlf-reload")


def test_sighup_with_a_non_utf8_user_file_names_the_file(running):
    with open(running.path("data", "user_data"), "ab") as handle:
        handle.write(USER_LINE.format(name="j\xfcrgen").encode("latin-1") + b"\n")
    reload_and_wait(running)
    log = running.log_text()
    assert "data file not loaded" in log
    problem = [line for line in log.splitlines() if "data file not loaded" in line][-1]
    assert "user_data" in problem, problem
    mick_still_works(running, "after-latin1-reload")


@pytest.mark.parametrize("table, line", [
    ("user_data", "ann\tacme.test\t\t\t-5\t\t\t0\t0"),
    ("user_data", "ann\tacme.test\tmbox/../../elsewhere\t\t0\t\t\t0\t0"),
    ("user_data", "ann\tacme.test\t\t\t0\tnot a mailbox\t\t0\t0"),
    ("user_data", "ann\tacme.test\t\t\t0\t\t\t-1\t0"),
    ("deny_data", "IPIN\t127.0.0.1/40"),
])
def test_sighup_refuses_hand_edited_values_the_commands_refuse(running, table, line):
    with open(running.path("data", table), "a") as handle:
        handle.write(line + "\n")
    reload_and_wait(running)
    log = running.log_text()
    assert "data file not loaded" in log and f"{table}:" in log, log[-800:]
    mick_still_works(running, "after-bad-value")
