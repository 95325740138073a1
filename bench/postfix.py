"""A private Postfix instance (smtpd -> cleanup -> qmgr -> virtual) for the benchmark.

Its own config, queue and data directories under the work directory (``postfix -c``),
one smtpd on a loopback high port, ``chroot`` off, a log file instead of syslog, and
virtual mailbox delivery into fresh Maildirs.  Nothing leaves the machine: no DNS
(``smtp_dns_support_level = disabled``), no local delivery, and every remote or relayed
recipient goes to the benchmark's loopback sink.  The system's own Postfix
configuration and port 25 are never touched.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time

from .peer import DOMAIN, Peer, free_port, wait_listening

# One line per service: name, type, private, unprivileged, chroot (always n), wakeup,
# process limit, command (master(5)).
SERVICES = """\
pickup    unix  n  -  n  60    1  pickup
cleanup   unix  n  -  n  -     0  cleanup
qmgr      unix  n  -  n  300   1  qmgr
rewrite   unix  -  -  n  -     -  trivial-rewrite
bounce    unix  -  -  n  -     0  bounce
defer     unix  -  -  n  -     0  bounce
trace     unix  -  -  n  -     0  bounce
verify    unix  -  -  n  -     1  verify
flush     unix  n  -  n  1000? 0  flush
proxymap  unix  -  -  n  -     -  proxymap
proxywrite unix -  -  n  -     1  proxymap
smtp      unix  -  -  n  -     -  smtp
relay     unix  -  -  n  -     -  smtp
showq     unix  n  -  n  -     -  showq
error     unix  -  -  n  -     -  error
retry     unix  -  -  n  -     -  error
discard   unix  -  -  n  -     -  discard
local     unix  -  n  n  -     -  local
virtual   unix  -  n  n  -     -  virtual
lmtp      unix  -  -  n  -     -  lmtp
anvil     unix  -  -  n  -     1  anvil
scache    unix  -  -  n  -     1  scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAILBOX_OWNER = "nobody"  # virtual(8) delivers as this user (uid >= virtual_minimum_uid)


class Postfix(Peer):
    name = "postfix"
    scenarios = frozenset("abcdeh")

    @staticmethod
    def available() -> str | None:
        if not os.path.exists("/usr/sbin/postfix"):
            return "Debian's postfix is not installed"
        if os.geteuid() != 0:
            return "a private Postfix needs root"
        return None

    def __init__(self, workdir: str, users: list[str], sink_port: int, dns_port: int = 0) -> None:
        super().__init__(workdir, users, sink_port, dns_port)
        self.conf = os.path.join(workdir, "conf")
        self.queue = os.path.join(workdir, "queue")
        self.log = os.path.join(workdir, "postfix.log")
        self.smtp_port = free_port()
        self.master_pid = 0

    def _configure(self) -> None:
        owner = pwd.getpwnam(MAILBOX_OWNER)
        for path in (self.conf, self.queue, self.mail):
            os.makedirs(path, mode=0o755, exist_ok=True)
        os.chown(self.mail, owner.pw_uid, owner.pw_gid)
        with open(os.path.join(self.conf, "vmailbox"), "w") as handle:
            for user in self.users:
                handle.write(f"{user}@{DOMAIN} {DOMAIN}/{user}/\n")  # trailing / = Maildir
        sink = f"smtp:[127.0.0.1]:{self.sink_port}"
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": os.path.join(self.workdir, "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bench.test",
            "mydomain": DOMAIN,
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_peername_lookup": "no",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "local_transport": "error:local delivery is off in the benchmark",
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_base": self.mail,
            "virtual_mailbox_maps": f"texthash:{self.conf}/vmailbox",
            "virtual_uid_maps": f"static:{owner.pw_uid}",
            "virtual_gid_maps": f"static:{owner.pw_gid}",
            "default_transport": sink,  # remote mail goes to the loopback sink only
            "relay_transport": sink,
            "smtp_dns_support_level": "disabled",
            "default_process_limit": "300",  # scenario (h) holds 200 smtpd sessions
            "maillog_file": self.log,
        }
        with open(os.path.join(self.conf, "main.cf"), "w") as handle:
            handle.writelines(f"{key} = {value}\n" for key, value in settings.items())
        with open(os.path.join(self.conf, "master.cf"), "w") as handle:
            handle.write(f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd\n{SERVICES}")

    def start(self) -> None:
        self._configure()
        done = subprocess.run(["/usr/sbin/postfix", "-c", self.conf, "start"],
                              capture_output=True, text=True, timeout=120,
                              start_new_session=True)
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stderr[-2000:]}{self._log_tail()}")
        pid_file = os.path.join(self.queue, "pid", "master.pid")
        deadline = time.monotonic() + 30
        while not os.path.exists(pid_file) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(pid_file) as handle:
            self.master_pid = int(handle.read().split()[0])
        wait_listening(self.smtp_port, what="postfix")

    def _log_tail(self) -> str:
        try:
            with open(self.log, errors="replace") as handle:
                return handle.read()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if not self.master_pid:
            return
        subprocess.run(["/usr/sbin/postfix", "-c", self.conf, "stop"], capture_output=True,
                       timeout=60)
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{self.master_pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        self.kill()
        self.master_pid = 0

    def roots(self) -> list[int]:
        return [self.master_pid] if self.master_pid else []

