"""Processes of the run a test started, and only those: a test that kills an actor by name must
not hit another run's actors on the same machine (a compare run, another suite)."""

from __future__ import annotations


def actor_pids(name: str, root_pid: int) -> list[int]:
    """Pids of the processes whose command line names `name` (a Ray actor class) and that descend
    from `root_pid` (the driver the test started: a local Ray it starts is its child)."""
    import psutil

    try:
        family = {p.pid for p in psutil.Process(root_pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return []
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if p.pid in family and any(name in c for c in (p.info["cmdline"] or []))]
