"""A private Dovecot serving POP3 only, the peer of scenario (f).

Its own configuration, base_dir, state and log files under the work directory, a
passwd-file user database, and ``mail_location`` pointing at the Maildirs the benchmark
pre-fills.  Mail processes run as an unprivileged user that owns those Maildirs.  The
system's Dovecot configuration is never read (``dovecot -c``), and it listens only on a
loopback high port.
"""

from __future__ import annotations

import os
import pwd
import subprocess

from . import maildirs
from .peer import DOMAIN, PASSWORD, Peer, free_port, wait_listening

MAIL_USER = "nobody"

CONFIG = """\
base_dir = {run}
state_dir = {state}
log_path = {log}
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{mail}/%d/%n
first_valid_uid = 1
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


class Dovecot(Peer):
    name = "dovecot"
    scenarios = frozenset("f")

    @staticmethod
    def available() -> str | None:
        if not os.path.exists("/usr/lib/dovecot/pop3"):
            return "Debian's dovecot-pop3d is not installed"
        if os.geteuid() != 0:
            return "a private Dovecot needs root"
        return None

    def __init__(self, workdir: str, users: list[str], sink_port: int, dns_port: int = 0) -> None:
        super().__init__(workdir, users, sink_port, dns_port)
        self.config = os.path.join(workdir, "dovecot.conf")
        self.log = os.path.join(workdir, "dovecot.log")
        self.pop3_port = free_port()
        self.owner = pwd.getpwnam(MAIL_USER)

    def start(self) -> None:
        passwd = os.path.join(self.workdir, "passwd")
        with open(passwd, "w") as handle:
            for user in self.users:
                # user:password:uid:gid::home (passwd-file format)
                handle.write(f"{user}@{DOMAIN}:{PASSWORD}:{self.owner.pw_uid}:"
                             f"{self.owner.pw_gid}::{self.maildir(user)}\n")
        with open(self.config, "w") as handle:
            handle.write(CONFIG.format(run=os.path.join(self.workdir, "run"),
                                       state=os.path.join(self.workdir, "state"),
                                       log=self.log, mail=self.mail, passwd=passwd,
                                       port=self.pop3_port))
        os.makedirs(self.mail, mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/dovecot", "-F", "-c", self.config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_listening(self.pop3_port, proc=self.proc, what="dovecot")

    def prepared(self) -> None:
        """After pre-filling: the mail processes read and move the files as MAIL_USER."""
        maildirs.chown_tree(self.mail, self.owner.pw_uid, self.owner.pw_gid)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        self.proc.wait(20)
        self.proc = None

