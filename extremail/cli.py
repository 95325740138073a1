"""Command-line entry points: ``smtpd``, ``adduser`` and ``adddomain`` (PROTOCOL.md).

``smtpd start`` validates the configuration, creates a missing base directory, refuses
to start twice (a stale PID file left by ``kill -9`` is removed), then detaches with
python-daemon and returns only once every listener is bound: the daemon reports back
through a pipe.  ``adduser``/``adddomain`` speak the management protocol, as the manual
says: the daemon is the only writer of the data files.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

from . import VERSION, config, layout, log
from .config import Config, ConfigError

STOP_WAIT_SECONDS = 60.0


# ---------------------------------------------------------------- PID file
def _process_alive(pid: int) -> bool:
    """True for a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_ours(pid: int) -> bool:
    """False when ``pid`` is some other program (a PID reused after ``kill -9``); True when
    it runs eXtremail or when that cannot be told."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().lower()
    except OSError:
        return True
    return b"extremail" in command or b"smtpd" in command


def running_pid(cfg: Config) -> int | None:
    """The PID of a running server, or None; a stale PID file is removed."""
    try:
        with open(cfg.FILE_PID, encoding="ascii") as handle:
            pid = int(handle.read().strip() or "0")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        pid = 0
    if pid > 0 and pid != os.getpid() and _process_alive(pid) and _is_ours(pid):
        return pid
    try:
        os.unlink(cfg.FILE_PID)
    except FileNotFoundError:
        pass
    return None


def _pidfile(cfg: Config):
    from daemon.pidfile import TimeoutPIDLockFile
    return TimeoutPIDLockFile(cfg.FILE_PID, acquire_timeout=0)


# ---------------------------------------------------------------- smtpd
def _load(args: argparse.Namespace) -> Config:
    return config.load(args.config)


def _serve(cfg: Config, foreground: bool, report) -> int:
    """Bind, report, serve until stopped.  ``report(ok, text)`` tells the starter."""
    from .control import Server, StartError
    log.setup(cfg.DIR_LOG, cfg.CFG_LOG_LEVEL, to_stderr=foreground)
    try:
        server = Server(cfg)
        try:
            server.bind()
        except StartError as exc:
            log.get("control").error("%s", exc)
            report(False, str(exc))
            return 1
        server.install_signals()
        server.start()
        report(True, f"eXtremail {VERSION} started (pid {os.getpid()})")
        server.serve()
        return 0
    finally:
        log.shutdown()  # the daemon leaves with os._exit: no atexit handlers run


def cmd_start(args: argparse.Namespace) -> int:
    try:
        base_cfg = _load(args)
        layout.ensure_base(base_cfg.base)
        cfg = _load(args)  # the shipped file may just have been written
        layout.ensure(cfg)
    except ConfigError as exc:
        print(f"smtpd: bad configuration: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"smtpd: cannot create the base directory: {exc}", file=sys.stderr)
        return 1
    pid = running_pid(cfg)
    if pid:
        print(f"smtpd: eXtremail is already running (pid {pid})", file=sys.stderr)
        return 1
    if args.foreground:
        return _start_foreground(cfg)
    return _start_daemon(cfg)


def _start_foreground(cfg: Config) -> int:
    from lockfile import AlreadyLocked, LockFailed
    lock = _pidfile(cfg)
    try:
        lock.acquire()
    except (AlreadyLocked, LockFailed) as exc:
        print(f"smtpd: cannot take the PID file {cfg.FILE_PID}: {exc}", file=sys.stderr)
        return 1

    def report(ok: bool, text: str) -> None:
        print(text if ok else f"smtpd: {text}", file=sys.stderr if not ok else sys.stdout,
              flush=True)
    try:
        return _serve(cfg, True, report)
    finally:
        lock.release()


def _start_daemon(cfg: Config) -> int:
    """Fork; the child detaches with python-daemon and reports through a pipe."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        chunks = []
        while True:
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_end)
        os.waitpid(child, 0)
        message = b"".join(chunks).decode("utf-8", "replace")
        status, _, text = message.partition(" ")
        if status == "OK":
            print(text)
            return 0
        print(f"smtpd: {text or 'the server did not start (see the log in DIR_LOG)'}",
              file=sys.stderr)
        return 1
    os.close(read_end)
    code = 1
    # A failure is told only once the daemon has let go of the PID file and its log:
    # the starter's exit status must mean that nothing is left running.
    failure = "the server did not start (see the log in DIR_LOG)"
    started = False
    try:
        import daemon
        context = daemon.DaemonContext(working_directory=cfg.base, umask=0o027,
                                       pidfile=_pidfile(cfg), files_preserve=[write_end],
                                       detach_process=True)
        with context:
            def report(ok: bool, text: str) -> None:
                nonlocal failure, started
                if ok:
                    started = True
                    os.write(write_end, f"OK {text}".encode())
                    os.close(write_end)
                else:
                    failure = text
            code = _serve(cfg, False, report)
    except BaseException as exc:  # anything before the report must reach the starter
        failure = str(exc)
    finally:
        if not started:
            try:
                os.write(write_end, f"ERR {failure}".encode())
            except OSError:
                pass
        os._exit(code)


def cmd_stop(args: argparse.Namespace) -> int:
    cfg = _config_or_exit(args)
    pid = running_pid(cfg)
    if not pid:
        print("eXtremail is not running", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while time.monotonic() < deadline:
        if not _process_alive(pid):
            print(f"eXtremail stopped (pid {pid})")
            return 0
        time.sleep(0.05)
    print(f"smtpd: eXtremail (pid {pid}) did not stop within {STOP_WAIT_SECONDS:.0f}s",
          file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _config_or_exit(args)
    pid = running_pid(cfg)
    if pid:
        print(f"eXtremail is running (pid {pid})")
        return 0
    print("eXtremail is stopped")
    return 3


def cmd_version(args: argparse.Namespace) -> int:
    print(f"eXtremail {VERSION}")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    cfg = _config_or_exit(args)
    try:
        layout.set_login(cfg, args.password)
    except OSError as exc:
        print(f"smtpd: cannot write {cfg.FILE_LOGIN}: {exc}", file=sys.stderr)
        return 1
    print("management password changed")
    return 0


DEMO_PORTS = {"PORT_SMTP": "2525", "PORT_POP3": "2110", "PORT_IMAP": "2143",
              "PORT_REMT": "4501", "PORT_SUBMISSION": "0"}


def cmd_demo(args: argparse.Namespace) -> int:
    """Run in the foreground on a demo base directory with unprivileged ports, with a
    domain ``example.test`` and a user ``demo@example.test`` (password ``demo``)."""
    from . import auth
    from .store import Domain, Store, User
    base = os.path.abspath(args.base)
    os.environ["EXTREMAIL_HOME"] = base
    conf = config.default_path(base)
    if not os.path.exists(conf):
        os.makedirs(os.path.dirname(conf), exist_ok=True)
        lines = [f"{name}={value}" for name, value in DEMO_PORTS.items()]
        lines += ["CFG_BIND=127.0.0.1", "CFG_HOSTNAME=localhost", "CFG_LOCALDOMAIN=example.test",
                  "CFG_POSTMASTER=postmaster@example.test"]
        with open(conf, "w", encoding="utf-8") as handle:
            handle.write(config.render_default_file() + "\n# demo settings\n"
                         + "\n".join(lines) + "\n")
    cfg = config.load(conf, base)
    layout.ensure(cfg)
    store = Store(cfg)
    store.load()
    if "example.test" not in store.domains.rows:
        store.add_domain(Domain("example.test"))
        store.add_user(User("demo", "example.test", password=auth.hash_password("demo")))
    print(f"demo base directory {base}: SMTP 127.0.0.1:{cfg.PORT_SMTP}, POP3 {cfg.PORT_POP3}, "
          f"management {cfg.PORT_REMT} (password 'system'); user demo@example.test / demo")
    args.config = conf
    args.foreground = True
    return cmd_start(args)


def _config_or_exit(args: argparse.Namespace) -> Config:
    try:
        return _load(args)
    except ConfigError as exc:
        print(f"smtpd: bad configuration: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def smtpd_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smtpd", description="eXtremail mail server")
    parser.add_argument("-c", "--config", help="configuration file "
                        "(default BASE/conf/eXtremail.conf)")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start the server")
    start.add_argument("--foreground", action="store_true", help="stay attached, log to stderr")
    start.set_defaults(func=cmd_start)
    sub.add_parser("stop", help="stop the server gracefully").set_defaults(func=cmd_stop)
    sub.add_parser("status", help="is the server running?").set_defaults(func=cmd_status)
    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    login = sub.add_parser("login", help="set the management password")
    login.add_argument("password")
    login.set_defaults(func=cmd_login)
    demo = sub.add_parser("demo", help="run a demo server on unprivileged ports")
    demo.add_argument("--base", default="demo", help="demo base directory (default ./demo)")
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------- adduser / adddomain
def quote(value: str) -> str:
    """A management-protocol value: quoted (with \\ escapes) when it needs to be."""
    if value and not any(ch in value for ch in ' "\\\t'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RemoteClient:
    """A minimal management-protocol client for the utilities."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.read_line()

    def read_line(self) -> str:
        line = self.file.readline(65536)
        if not line:
            raise ConnectionError("connection closed by the server")
        return line.decode("utf-8", "replace").rstrip("\r\n")

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")
        return self.read_line()

    def close(self) -> None:
        try:
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self.sock.close()


def _utility(prog: str, argv: Sequence[str] | None, needs_user: bool) -> int:
    parser = argparse.ArgumentParser(prog=prog, add_help=False)
    parser.add_argument("--help", action="help")
    parser.add_argument("-h", dest="host", default="127.0.0.1", help="management host")
    parser.add_argument("-p", dest="port", type=int, default=4501, help="management port")
    parser.add_argument("-l", dest="login", required=True, help="management password")
    parser.add_argument("-d", dest="domain", required=True, help="domain")
    if needs_user:
        parser.add_argument("-u", dest="user", required=True, help="user name")
        parser.add_argument("-w", dest="password", required=True, help="user password")
    args = parser.parse_args(argv)
    try:
        client = RemoteClient(args.host, args.port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno is None and isinstance(exc, socket.timeout):
            reason = "timed out"
        print(f"{prog}: cannot connect to {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 2
    try:
        answer = client.command(f"LOGIN {quote(args.login)}")
        if answer.startswith("+OK"):
            if needs_user:
                answer = client.command(f"USER ADD NAME={quote(args.user)} "
                                        f"DOMAIN={quote(args.domain)} PASS={quote(args.password)}")
            else:
                answer = client.command(f"DOMAIN ADD NAME={quote(args.domain)}")
        client.close()
    except OSError as exc:
        print(f"{prog}: connection to {args.host}:{args.port} failed: "
              f"{os.strerror(exc.errno) if exc.errno else exc}", file=sys.stderr)
        return 2 if getattr(exc, "errno", None) in (errno.ECONNREFUSED, errno.ECONNRESET) else 1
    print(answer)
    return 0 if answer.startswith("+OK") else 1


def adduser_main(argv: Sequence[str] | None = None) -> int:
    return _utility("adduser", argv, needs_user=True)


def adddomain_main(argv: Sequence[str] | None = None) -> int:
    return _utility("adddomain", argv, needs_user=False)


def main_smtpd() -> None:
    sys.exit(smtpd_main())


def main_adduser() -> None:
    sys.exit(adduser_main())


def main_adddomain() -> None:
    sys.exit(adddomain_main())
