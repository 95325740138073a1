"""bench/run: eXtremail side by side with Postfix, aiosmtpd and Dovecot (issue 7).

Measures the machine's limits, then for each repetition starts every server in turn
(the order rotated each time) as a private instance in a fresh directory, warms it up,
runs its scenarios with the one load generator, and stops it.  Everything it starts is
stopped at the end, whatever happens (``try``/``finally``, ``atexit``, SIGTERM), and its
work directory is removed only after the last timing.

Usage: bench/run [--quick | --smoke] [--only a,b,...] [--servers extremail,postfix,...]
                 [--results DIR] [--keep]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import machine, profile, report, scenarios
from .aiosmtpd_peer import Aiosmtpd
from .dovecot import Dovecot
from .extremail_peer import Extremail
from .helpers import LoopbackDNS, Sink
from .peer import Peer
from .postfix import Postfix

PEERS: dict[str, type[Peer]] = {"extremail": Extremail, "postfix": Postfix,
                                "aiosmtpd": Aiosmtpd, "dovecot": Dovecot}
HERE = os.path.dirname(os.path.abspath(__file__))
WORK_PARENT = "/var/tmp"  # the root file system, as the servers' own spools would be


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="reduced counts, 3 repetitions, under 3 minutes")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="tiny counts, 1 repetition; peers not installed are skipped")
    parser.set_defaults(mode="full")
    parser.add_argument("--only", help="comma list of scenario letters (default: all)")
    parser.add_argument("--servers", default=",".join(PEERS), type=_server_list,
                        help="comma list of servers (default: %(default)s)")
    parser.add_argument("--results", default=os.path.join(HERE, "results"),
                        help="where latest.json and latest.png go (default: bench/results)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (servers' logs and Maildirs)")
    parser.add_argument("--profile", action="store_true",
                        help="sample eXtremail with py-spy in every row: RESULTS/profile-ROW.txt")
    return parser.parse_args(argv)


def _server_list(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in PEERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(PEERS)}")
    return names


class Run:
    """Owns everything started, so one place stops it all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = tempfile.mkdtemp(prefix="extremail-bench-", dir=WORK_PARENT)
        os.chmod(self.work, 0o755)  # Postfix and Dovecot run parts of themselves unprivileged
        self.running: list[object] = []
        self.skipped: dict[str, str] = {}
        self.began = time.monotonic()

    def start(self, thing):
        self.running.append(thing)
        thing.start()
        return thing

    def stop(self, thing) -> None:
        if thing in self.running:
            self.running.remove(thing)
            thing.stop()

    def close(self) -> None:
        """Stop whatever is still running (last started first); remove the work directory."""
        while self.running:
            thing = self.running.pop()
            try:
                thing.stop()
            except Exception as error:  # go on stopping the others
                print(f"bench: stopping {type(thing).__name__}: {error}", file=sys.stderr)
        if self.work and not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        elif self.work:
            print(f"bench: work directory kept: {self.work}")
        self.work = ""

    def servers(self) -> list[str]:
        """The chosen servers that can run here; the others are skipped with their reason."""
        chosen = []
        for name in self.args.servers:
            reason = PEERS[name].available()
            if reason is None:
                chosen.append(name)
            else:
                self.skipped[name] = reason
                print(f"bench: skipping {name}: {reason}", file=sys.stderr)
        return chosen

    def execute(self) -> int:
        rows, reps = scenarios.plan(self.args.mode)
        if self.args.only:
            rows = [row for row in rows if row.letter in self.args.only.split(",")]
        print(f"bench: {self.args.mode} run, {reps} repetition(s), work in {self.work}")
        print(f"bench: Python servers and load generator on {_interpreter()}")
        limits = machine.measure(self._dir("machine"), self.args.mode != "full")
        print("bench: machine: " + ", ".join(f"{k} {v}" for k, v in limits.items()))
        servers = self.servers()
        sink = None
        if any(row.kind == "relay" for row in rows):
            reason = Sink.available()
            if reason is None:
                sink = self.start(Sink(self._dir("sink")))
            else:
                self.skipped["e"] = reason
                rows = [row for row in rows if row.kind != "relay"]
        dns = self.start(LoopbackDNS()) if LoopbackDNS.available() is None else None
        results: dict[str, dict[str, list[scenarios.Result]]] = {row.key: {} for row in rows}
        for rep in range(reps):
            for name in servers[rep % len(servers):] + servers[:rep % len(servers)]:
                mine = [row for row in rows if row.letter in PEERS[name].scenarios]
                # (h) weighs a fresh server; the others share one instance, each row
                # delivering into mailboxes of its own.
                for group in ([row for row in mine if row.kind == "idle"],
                              [row for row in mine if row.kind != "idle"]):
                    if group:
                        self._one_server(name, rep, group, sink, dns, results)
        details = report.medians(results)
        scores = report.headline(rows, details, results)
        checks = report.targets(scores, details)
        print()
        print(report.table(rows, details, [s for s in PEERS if s in servers]))
        print()
        for check in checks:
            verdict = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
            print(f"target {check['target']}: {verdict} "
                  f"(eXtremail {check['extremail']}, bound {check['bound']})")
        os.makedirs(self.args.results, exist_ok=True)
        run_info = {"mode": self.args.mode, "repetitions": reps, "servers": servers,
                    "skipped": self.skipped, "cores": os.cpu_count(), "python": _interpreter(),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": _commit(),
                    "rows": {row.key: row.title for row in rows}}
        report.write_json(os.path.join(self.args.results, "latest.json"), scores, details,
                          checks, limits, run_info)
        why_not = report.write_png(os.path.join(self.args.results, "latest.png"), scores)
        if why_not:
            print(f"bench: no latest.png: {why_not}", file=sys.stderr)
        failures = report.errors(details)
        for failure in failures:
            print(f"bench: FAILED {failure}", file=sys.stderr)
        print(f"bench: wrote {os.path.join(self.args.results, 'latest.json')} "
              f"after {time.monotonic() - self.began:.0f}s")
        return 1 if failures else 0

    def _dir(self, name: str) -> str:
        path = os.path.join(self.work, name)
        os.makedirs(path, mode=0o755, exist_ok=True)
        return path

    def _one_server(self, name: str, rep: int, group: list[scenarios.Scenario],
                    sink: Sink | None, dns: LoopbackDNS | None, results: dict) -> None:
        """Start one server fresh, run ``group`` once, stop it."""
        workdir = self._dir(f"{name}-{rep}-{group[0].key}")
        sink_port = sink.port if sink else 9  # discard port: nothing relays without a sink
        peer = PEERS[name](workdir, scenarios.users(group), sink_port, dns.port if dns else 0)
        began = time.monotonic()
        try:
            self.start(peer)
            if any(row.kind in ("smtp", "relay") for row in group):
                scenarios.warm_up(peer)
            scenarios.prefill(group, peer)
        except Exception as error:  # one server failing must not stop the rest
            self.stop(peer)
            for row in group:
                results[row.key].setdefault(name, []).append(
                    scenarios.Result(error=f"start: {error}"))
            print(f"bench: rep {rep + 1} {name}: could not start: {error}", file=sys.stderr)
            return
        print(f"bench: rep {rep + 1} {name:9} started in {time.monotonic() - began:.1f}s",
              flush=True)
        try:
            for row in group:
                result = self._run_row(row, peer, sink)
                results[row.key].setdefault(name, []).append(result)
                print(f"bench: rep {rep + 1} {name:9} {row.key:4} " + _summary(result), flush=True)
        finally:
            began = time.monotonic()
            self.stop(peer)
            print(f"bench: rep {rep + 1} {name:9} stopped in {time.monotonic() - began:.1f}s",
                  flush=True)


    def _run_row(self, row: scenarios.Scenario, peer: Peer, sink: Sink | None) -> scenarios.Result:
        if not (self.args.profile and peer.name == "extremail" and row.kind != "idle"):
            return scenarios.run_row(row, peer, sink)
        os.makedirs(self.args.results, exist_ok=True)
        path = os.path.join(self.args.results, f"profile-{row.key}.txt")
        profiler = profile.Profiler(peer.roots()[0], path)
        try:
            return scenarios.run_row(row, peer, sink)
        finally:
            profiler.stop()
            print("\n".join(f"  {line}" for line in profile.summary(path)))


def _interpreter() -> str:
    """The Python that runs eXtremail, aiosmtpd and the load generator (it sets their CPU
    per message): its version and the binary a venv was made from."""
    binary = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return f"Python {sys.version.split()[0]} ({binary})"


def _commit() -> str:
    """The code measured: the git commit, marked when the work tree had changes."""
    try:
        def git(*argv: str) -> str:
            return subprocess.run(["git", *argv], cwd=os.path.dirname(HERE), text=True,
                                  capture_output=True, timeout=30).stdout.strip()
        head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "extremail")
    except OSError:
        return "unknown"
    return f"{head}+changes" if dirty else head


def _summary(result: scenarios.Result) -> str:
    figures = result.figures()
    if "error" in figures:
        return f"FAILED: {figures['error']}"
    if not result.seconds:
        return f"{figures['memory_MB']:.1f} MB with {result.messages} connections"
    p99 = figures["p99_ms"]
    login = (f", login p99 {round(figures['login_p99_ms'], 2)} ms" if "login_p99_ms" in figures
             else "")
    return (f"{figures['msg_per_s']:.0f} msg/s, {figures['MB_per_s']:.1f} MB/s, "
            f"p99 {p99 if p99 is None else round(p99, 2)} ms{login}, "
            f"peak {figures['memory_MB']:.0f} MB, CPU {figures['cpu_ms_per_msg']:.2f} ms/msg")


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    run = Run(args)
    atexit.register(run.close)
    # SIGTERM ends the run through the finally below, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run.execute()
    finally:
        run.close()


if __name__ == "__main__":
    sys.exit(main())
