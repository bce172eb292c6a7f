"""Loaded (through PYTHONPATH) by the test processes run under faketime.

They keep the real monotonic clock (FAKETIME_DONT_FAKE_MONOTONIC=1), as a machine whose
wall clock is off would: with it faked, libfaketime 0.9.10 makes every timed wait
(``threading.Event.wait``, so a lease heartbeat) hang. With it real, the same libfaketime
fails ``time.sleep`` (``clock_nanosleep`` with ``TIMER_ABSTIME``) with EINVAL, so here a
sleep is a timed wait instead.
"""

import threading
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


time.sleep = _sleep
