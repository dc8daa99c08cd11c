"""The notify socket: messages are attributed by the kernel-stamped sender pid, strangers are counted."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from oraclewad.supervisor.notify import parse_message
from tests.supervisor.conftest import wait_until


def address(sup) -> str:  # type: ignore[no-untyped-def]
    path = sup.notify.env_value
    return "\0" + path[1:] if path.startswith("@") else path


def send_as(sup, data: bytes, pid: int, uid: int) -> None:  # type: ignore[no-untyped-def]
    """A datagram with chosen credentials (only root may claim another pid and uid)."""
    creds = struct.pack("iII", pid, uid, os.getgid())
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)], 0, address(sup))


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
        s.sendto(b"READY=1", address(sup))
    await wait_until(lambda: sup.notify.unknown == before + 1)
    status = sup.status("t/x")
    assert status.state == "starting" and not status.ready


@pytest.mark.skipif(os.geteuid() != 0, reason="claiming another pid's credentials needs root")
async def test_a_message_with_the_childs_pid_but_another_uid_is_refused(sup, make_spec):
    sup.apply({"t/x": make_spec("t/x", "--no-ready")})
    await sup.wait_state("t/x", "starting", 10)
    await wait_until(lambda: sup.status("t/x").pid is not None)
    pid = sup.status("t/x").pid
    assert pid is not None
    send_as(sup, b"READY=1", pid, 4242)         # the right pid, the wrong user
    await wait_until(lambda: sup.notify.forged == 1)
    assert not sup.status("t/x").ready
    send_as(sup, b"READY=1", pid, os.getuid())  # the user it runs as: accepted
    await sup.wait_state("t/x", "running", 10)
