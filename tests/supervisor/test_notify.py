"""The notify socket: messages are attributed by the kernel-stamped sender pid, strangers are counted."""

from __future__ import annotations

import socket

from oraclewad.supervisor.notify import parse_message
from tests.supervisor.conftest import wait_until


def test_parse_message():
    assert parse_message(b"READY=1\nSTATUS=up and =running\n\njunk\nWATCHDOG=1") == {
        "READY": "1", "STATUS": "up and =running", "WATCHDOG": "1"}
    assert parse_message(b"\xff=\xfe") == {"\ufffd": "\ufffd"}


async def test_messages_from_unknown_pids_are_counted_and_ignored(sup, make_spec):
    sup.apply({"t/x": make_spec("t/x", "--no-ready")})
    await sup.wait_state("t/x", "starting", 10)
    before = sup.notify.unknown
    # This test process is not the child: its READY=1 must not make the service ready.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", str(sup.notify.path))
    await wait_until(lambda: sup.notify.unknown == before + 1)
    status = sup.status("t/x")
    assert status.state == "starting" and not status.ready
