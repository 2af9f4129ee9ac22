"""Preemption: the loop told to stop with a grace period (Kubernetes, `ray job stop`, a scheduler's
time limit, a spot notice) all arrive as SIGTERM to the driver.

The first SIGTERM only asks: the loop stops at its next safe point, which is the start of a stage
or the end of a training step (that step's DeepSpeed checkpoint is then saved even when
`trainer.save_every` would not have saved it), releases its actors on the way out, writes a
`preempted` event to metrics.jsonl, and the command exits with EXIT_CODE and says how to resume.
A rerun of the same command resumes from that checkpoint. If no safe point comes within
`run.preempt_grace_s`, or a second SIGTERM arrives, the driver exits at once with the same code:
every file is still whole (all of them are written by rename; cropi.store.files), and the rerun
resumes from the last checkpoint and shard written.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

EXIT_CODE = 75  # EX_TEMPFAIL: stopped on request, rerun to resume


class Preempted(Exception):
    """Raised at a safe point after SIGTERM; `where` names it."""

    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


_asked: dict = {"at": None, "grace": 60.0, "timer": None}


def _exit_now(why: str) -> None:
    print(f"cropi: preempted: {why}; exiting at once (every file is whole); rerun the same command to resume "
          "from the last checkpoint", file=sys.stderr, flush=True)
    os._exit(EXIT_CODE)


def _on_sigterm(signum, frame) -> None:
    if _asked["at"] is not None:
        _exit_now("a second SIGTERM during the grace period")
    _asked["at"] = time.time()
    print("cropi: SIGTERM: stopping at the next safe point (end of this training step or start of the next "
          "stage)", file=sys.stderr, flush=True)
    timer = threading.Timer(_asked["grace"], _exit_now, args=(f"no safe point within run.preempt_grace_s={_asked['grace']}",))
    timer.daemon = True
    timer.start()
    _asked["timer"] = timer


def install(grace_s: float) -> None:
    """Handle SIGTERM as a request to stop (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    reset()
    _asked.update(grace=float(grace_s), installed=True)
    signal.signal(signal.SIGTERM, _on_sigterm)


def rearm() -> None:
    """Put the handler back if install() set it: call after anything that replaces it (ray.init)."""
    if _asked.get("installed") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def reset() -> None:
    """Forget a request and cancel its grace timer (the handler stays)."""
    if _asked["timer"] is not None:
        _asked["timer"].cancel()
    _asked.update(at=None, timer=None)


def requested() -> bool:
    return _asked["at"] is not None


def check(where: str) -> None:
    """A safe point: raise Preempted if SIGTERM has arrived."""
    if requested():
        raise Preempted(where)
