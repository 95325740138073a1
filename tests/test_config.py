"""eXtremail.conf: defaults, the base directory, aliases, and refusals naming the line."""

from __future__ import annotations

import ipaddress
import os

import pytest

from extremail import config
from extremail.config import ConfigError
from harness import ROOT

# The manual's table (paths relative to the base directory).
MANUAL_DEFAULTS = {
    "PORT_SMTP": 25, "PORT_POP3": 110, "PORT_REMT": 4501, "CFG_LOG_LEVEL": 3,
    "QUEUE_SMTP": 10, "QUEUE_POP3": 10, "QUEUE_REMT": 10,
    "TIMEOUT_SMTP1": 300, "TIMEOUT_SMTP2": 300, "TIMEOUT_SMTP3": 300, "TIMEOUT_SMTP4": 120,
    "TIMEOUT_SMTP5": 600, "TIMEOUT_POP3": 600, "TIMEOUT_REMT": 60, "TIMEOUT_SOCK": 60,
    "TIMEOUT_DNS": 60, "BUFFER_SOCK": 10000, "BUFFER_MAIL": 10000,
    "CFG_NUM_QUEUE": 10, "CFG_MIN_QUEUE": 10, "CFG_MIN_CONTROL": 5, "CFG_HOR_RETRY_MAIL": 48,
    "CFG_ANTI_RELY": 1, "CFG_RELY_TIMEOUT": 15, "CFG_POSTMASTER": "Postmaster@localdomain",
    "CFG_LOCALDOMAIN": "localdomain",
}
MANUAL_FILES = {
    "FILE_USER_DATA": "data/user_data", "FILE_DOMAIN_DATA": "data/domain_data",
    "FILE_ALIAS_DATA": "data/alias_data", "FILE_DENY_DATA": "data/deny_data",
    "FILE_DSN_FAIL": "data/dsn_fail", "FILE_DSN_DELA": "data/dsn_dela", "FILE_PID": "data/pid",
    "FILE_LOGIN": "data/remt_login",
}
MANUAL_DIRS = {"DIR_LOG": "log", "DIR_USER_MBOX": "mbox", "DIR_QUEUE_MBOX": "queue",
               "DIR_TMP": "tmp"}
PROTOCOL_DEFAULTS = {
    "PORT_IMAP": 143, "PORT_SMTP_OUT": 25, "PORT_SUBMISSION": 587, "PORT_SMTPS": 0,
    "PORT_POP3S": 0, "PORT_IMAPS": 0, "CFG_BIND": "0.0.0.0", "CFG_REMT_BIND": "127.0.0.1",
    "CFG_HOSTNAME": "", "CFG_DNS_SERVERS": (), "CFG_SMART_HOST": (), "CFG_NUM_DELIVERY": 5,
    "CFG_HOR_DELAY_DSN": 4, "CFG_MAX_CONN": 200, "CFG_MAX_MAIL_SIZE": 10240,
}


def write(tmp_path, text: str) -> str:
    path = tmp_path / "eXtremail.conf"
    path.write_text(text)
    return str(path)


def test_every_manual_parameter_has_the_manual_default(tmp_path) -> None:
    cfg = config.load(str(tmp_path / "missing.conf"), str(tmp_path))
    for name, value in {**MANUAL_DEFAULTS, **PROTOCOL_DEFAULTS}.items():
        assert getattr(cfg, name) == value, name
    for name, rel in MANUAL_FILES.items():
        assert getattr(cfg, name) == os.path.join(str(tmp_path), rel), name
    for name, rel in MANUAL_DIRS.items():
        assert getattr(cfg, name) == os.path.join(str(tmp_path), rel) + os.sep, name
    assert os.path.join(str(tmp_path), "conf", "server.crt") == cfg.FILE_TLS_CERT
    assert os.path.join(str(tmp_path), "data", "dns_cache") == cfg.FILE_DNS_CACHE
    assert (ipaddress.ip_network("127.0.0.1/32"),) == cfg.CFG_LOCALIP


def test_base_directory_is_extremail_home_or_the_manuals(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("EXTREMAIL_HOME", raising=False)
    assert config.base_directory() == "/home/eXtremail"
    assert config.default_path() == "/home/eXtremail/conf/eXtremail.conf"
    monkeypatch.setenv("EXTREMAIL_HOME", str(tmp_path))
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "eXtremail.conf").write_text(
        "# a comment\n\nFILE_USER_DATA=elsewhere/users\nDIR_TMP=/var/tmp/xm\nPORT_REMT=4999\n")
    cfg = config.load()
    assert cfg.base == str(tmp_path)
    assert str(tmp_path / "elsewhere" / "users") == cfg.FILE_USER_DATA
    assert cfg.DIR_TMP == "/var/tmp/xm/"
    assert str(tmp_path / "mbox") + "/" == cfg.DIR_USER_MBOX
    assert cfg.PORT_REMT == 4999
    assert cfg.text["PORT_REMT"] == "4999" and cfg.text["PORT_SMTP"] == "25"


def test_manual_spellings_with_a_space_are_accepted(tmp_path) -> None:
    cfg = config.load(write(tmp_path, "TIMEOUT SOCK=30\nBUFFER SOCK = 4096\n"), str(tmp_path))
    assert cfg.TIMEOUT_SOCK == 30 and cfg.BUFFER_SOCK == 4096


@pytest.mark.parametrize("text, line, words", [
    ("PORT_SMTP=25\nNO_SUCH_THING=1\n", 2, "unknown parameter 'NO_SUCH_THING'"),
    ("\n# c\nPORT_SMTP=twenty-five\n", 3, "PORT_SMTP=twenty-five"),
    ("PORT_POP3=70000\n", 1, "PORT_POP3=70000"),
    ("CFG_ANTI_RELY=3\n", 1, "CFG_ANTI_RELY=3"),
    ("CFG_LOCALIP=10.0.0.0/33\n", 1, "CFG_LOCALIP"),
    ("CFG_BIND=somewhere\n", 1, "CFG_BIND"),
    ("CFG_POSTMASTER=nobody\n", 1, "CFG_POSTMASTER"),
    ("TIMEOUT_REMT=0\n", 1, "TIMEOUT_REMT=0"),
    ("PORT_SMTP=25\nPORT_SMTP=26\n", 2, "PORT_SMTP given twice (first on line 1)"),
    ("PORT_SMTP 25\n", 1, "expected NAME=value"),
])
def test_bad_lines_are_refused_naming_the_line(tmp_path, text, line, words) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path, str(tmp_path))
    assert f"{path}:{line}:" in str(info.value) and words in str(info.value)


def test_shipped_file_is_the_rendered_default_and_lists_every_parameter(tmp_path) -> None:
    with open(os.path.join(ROOT, "conf", "eXtremail.conf"), encoding="utf-8") as handle:
        shipped = handle.read()
    assert shipped == config.render_default_file()
    for param in config.PARAMS:
        assert f"#{param.name}={param.default}\n" in shipped
    # uncommenting every line gives the defaults again
    uncommented = "\n".join(line[1:] if line.startswith("#") and "=" in line
                            and line[1:].split("=")[0] in config.PARAM_BY_NAME else line
                            for line in shipped.splitlines())
    cfg = config.load(write(tmp_path, uncommented), str(tmp_path))
    assert cfg.text == config.load(str(tmp_path / "none"), str(tmp_path)).text


def test_config_is_immutable(tmp_path) -> None:
    cfg = config.load(str(tmp_path / "none"), str(tmp_path))
    with pytest.raises(AttributeError):
        cfg.PORT_SMTP = 26
    assert cfg.replace(PORT_SMTP="2525").PORT_SMTP == 2525 and cfg.PORT_SMTP == 25
