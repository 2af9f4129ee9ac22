"""cropi.preempt on its own: a SIGTERM is a request checked at safe points, its grace period ends
the process, a second one ends it at once (the end-to-end runs: tests/faults/test_preemption.py)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cropi import preempt


@pytest.fixture
def handler():
    old = signal.getsignal(signal.SIGTERM)
    preempt.install(30)
    yield
    preempt.reset()
    signal.signal(signal.SIGTERM, old)


def test_sigterm_is_a_request_raised_at_the_next_safe_point(handler):
    preempt.check("before")  # nothing asked yet
    assert not preempt.requested()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert preempt.requested()
    with pytest.raises(preempt.Preempted) as e:
        preempt.check("the start of stage x")
    assert e.value.where == "the start of stage x"


def _child(body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import os, signal, time
        from cropi import preempt
        {body}
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_no_safe_point_within_the_grace_period_exits_75():
    t0 = time.time()
    r = _child("preempt.install(1.0); os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)")
    assert r.returncode == preempt.EXIT_CODE and time.time() - t0 < 20, r.stderr
    assert "no safe point within run.preempt_grace_s=1.0" in r.stderr


def test_a_second_sigterm_exits_75_at_once():
    t0 = time.time()
    r = _child("preempt.install(30); os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.1); "
               "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)")
    assert r.returncode == preempt.EXIT_CODE and time.time() - t0 < 20, r.stderr
    assert "a second SIGTERM during the grace period" in r.stderr
