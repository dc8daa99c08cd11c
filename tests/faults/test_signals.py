"""Repeated stop signals during shutdown are one request: exit 0 (issue 7 item 9, issue 8 item 6)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.helpers import ready_pids
from tests.harness import alive, children_of, unique_id, wait_for, write_tenant


@pytest.mark.parametrize("burst", [
    (signal.SIGTERM, signal.SIGTERM),
    (signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTERM),
], ids=["term-term", "int-term-int-hup-term"])
def test_repeated_signals_during_shutdown_end_in_exit_0(make_daemon, burst) -> None:
    daemon = make_daemon()
    tid = unique_id()
    write_tenant(daemon.root, tid)
    daemon.start()
    wait_for(lambda: ready_pids(daemon, [tid]), what="services ready")
    children = children_of(daemon.proc.pid)
    for signum in burst:
        daemon.signal(signum)
        time.sleep(0.1)
    # and one more late in the shutdown, while the data servers stop
    time.sleep(0.5)
    if daemon.proc.poll() is None:
        daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0, daemon.stderr()[-3000:]
    assert not [p for p in children if alive(p)]
