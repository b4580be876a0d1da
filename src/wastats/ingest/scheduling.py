"""The background work of ingestion runs as *batch* work for the kernel's scheduler.

The inbox writer thread, the counting thread and the counting process are woken by the event
loop's requests: a body handed in, a commit's ids sent. Linux's default policy lets a thread
that wakes up preempt the one running on its core at once, so on a busy core every request that
woke the writer cost two involuntary context switches of the event loop, and a writer that ran
for one or two bodies at a time (a commit, an fsync each). Under `SCHED_BATCH` the kernel does
not preempt on wake-up: the woken thread runs when the event loop waits for the network, or its
time slice ends, by which time it finds more bodies to commit in one transaction. It still gets
its fair share of the CPU (same weight as any other thread), so nothing starves; and where a
core is free, it runs there at once, as before. Measured (issue 13, docs/benchmarks.md, sixth
session): with a writer that stored nothing, the event loop's involuntary switches fell from 2.4
to 0.01 a request; in three alternated pairs with the real writer and counting process,
single-status webhooks went from 0.158, 0.126 and 0.124 of the raw ASGI app to 0.224, 0.166 and
0.163.

Only the scheduling changes: a body is still answered only once its commit is on the disk.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def run_as_batch_work() -> bool:
    """Put the calling thread (and the threads it starts later) under `SCHED_BATCH`; returns
    whether it is. Elsewhere than on Linux, or where a sandbox refuses it, the thread stays
    under the default policy, which is only slower."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        # pid 0: the calling thread (Linux schedules threads, not processes).
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:
        log.debug("SCHED_BATCH refused (%s): background work runs under the default policy", exc)
        return False
    return True
