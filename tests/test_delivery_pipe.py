"""extremail/pipe.py as a unit: exit statuses, output, environment, timeouts, bad commands."""

from __future__ import annotations

import sys

from extremail import pipe

PY = sys.executable


def test_exit_statuses_classify_the_outcome() -> None:
    ok = pipe.run(f"{PY} -c 'import sys; sys.stdout.write(sys.stdin.read().upper())'", b"hi\nthere\n",
                  "a@x.test", "b@y.test")
    assert (ok.status, ok.reply) == ("delivered", "250 2.0.0 Delivered to program: HI")
    retry = pipe.run(f"{PY} -c 'raise SystemExit(75)'", b"", "a@x.test", "b@y.test")
    assert retry.status == "deferred" and retry.reply.startswith("451 4.3.0")
    failed = pipe.run(f"{PY} -c 'print(\"quota exceeded\"); raise SystemExit(3)'", b"", "", "b@y.test")
    assert failed == pipe.Outcome("failed", "554 5.3.0 Program failed (exit 3): quota exceeded")


def test_environment_is_only_path_sender_recipient() -> None:
    outcome = pipe.run(f"{PY} -c 'import os; print(sorted(os.environ.items()))'", b"", "a@x.test",
                       "b@y.test")
    assert "('RECIPIENT', 'b@y.test'), ('SENDER', 'a@x.test')" in outcome.reply
    assert "HOME" not in outcome.reply and "EXTREMAIL" not in outcome.reply


def test_bad_commands_fail_and_hangs_are_retried() -> None:
    assert pipe.run("/nonexistent/program", b"", "", "b@y.test").reply.startswith("554 5.3.5 Pipe program "
                                                                                   "not found")
    assert pipe.run("'unbalanced", b"", "", "b@y.test").status == "failed"
    assert pipe.run("", b"", "", "b@y.test").status == "failed"
    slow = pipe.run(f"{PY} -c 'import time; time.sleep(30)'", b"", "", "b@y.test", timeout=0.5)
    assert slow.status == "deferred" and "timed out" in slow.reply


def test_no_shell_metacharacters_are_interpreted(tmp_path) -> None:
    marker = tmp_path / "pwned"
    outcome = pipe.run(f"{PY} -c 'import sys; print(sys.argv[1:])' '; touch {marker}' '$(id)'", b"", "",
                       "b@y.test")
    assert outcome.status == "delivered" and f"'; touch {marker}', '$(id)'" in outcome.reply
    assert not marker.exists()
