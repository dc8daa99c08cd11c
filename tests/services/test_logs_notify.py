"""In-process units: the JSON log format, secret scrubbing, and the sd_notify/sd_listen_fds parsing."""

from __future__ import annotations

import io
import json
import logging
import os
import socket

import pytest
import trio

from oraclewad.services import notify
from oraclewad.services.config import ConfigError
from oraclewad.services.logs import JsonFormatter, Redactor, channel_of, redact_url, secrets_in


def _format(record_args: dict, redact: Redactor | None = None, **extra) -> dict:
    formatter = JsonFormatter({"tenant": "imperio", "service": "recovery"}, redact or Redactor())
    record = logging.LogRecord(record_args.get("name", "oraclewad.services.webhook"), logging.WARNING,
                               __file__, 1, record_args.get("msg", "order %s"), ("42",), None)
    record.__dict__.update(extra)
    return json.loads(formatter.format(record))


def test_json_line_shape():
    obj = _format({}, order_id="42", attempts=2)
    assert list(obj)[:4] == ["ts", "level", "channel", "msg"]
    assert obj["level"] == "warning" and obj["channel"] == "webhook" and obj["msg"] == "order 42"
    assert obj["ts"].endswith("Z") and len(obj["ts"]) == len("2025-01-01T00:00:00.000Z")
    assert (obj["tenant"], obj["service"]) == ("imperio", "recovery")
    assert (obj["order_id"], obj["attempts"]) == ("42", 2)
    assert "logger" not in obj


def test_third_party_loggers_get_a_channel():
    assert channel_of("oraclewad.services.antiban.pool") == "antiban"
    assert channel_of("hypercorn.error") == "http"
    assert channel_of("psycopg.pool") == "runtime"
    assert _format({"name": "psycopg.pool"})["logger"] == "psycopg.pool"


def test_secrets_are_scrubbed_everywhere_in_the_line():
    config = {"postgres": {"dsn": "postgresql://u:p%40ss-word@h/db"}, "webhook_secret": 'sec"ret\\1',
              "redis": {"url": "redis://:urlpass99@h:6379/0", "password": "redispw1", "prefix": "imperio:"},
              "evolution": {"instances": [{"name": "i1", "token": "tok-123456"}], "api_key": "evo-key-1"},
              "templates": {"thanks": "Obrigado!"}, "short": {"password": "pw"}}
    found = set(secrets_in(config))
    expected = {"p%40ss-word", "p@ss-word", 'sec"ret\\1', "urlpass99", "redispw1", "tok-123456", "evo-key-1"}
    assert expected <= found
    assert "Obrigado!" not in found and "imperio:" not in found
    redact = Redactor(found)
    obj = _format({"msg": "dsn %s"}, redact, note='quoted sec"ret\\1 and p@ss-word', key="tok-123456")
    line = json.dumps(obj)
    for secret in found - {"pw"}:
        assert secret not in line and json.dumps(secret)[1:-1] not in line
    assert obj["key"] == "***"
    assert Redactor(["pw"])("pw stays: too short to scrub safely") == "pw stays: too short to scrub safely"


def test_exceptions_become_a_field():
    formatter = JsonFormatter({}, Redactor(["boom-secret"]))
    try:
        raise ValueError("boom-secret")
    except ValueError:
        record = logging.LogRecord("oraclewad.services.runtime", logging.ERROR, __file__, 1, "failed", (),
                                   __import__("sys").exc_info())
    obj = json.loads(formatter.format(record))
    assert "ValueError: ***" in obj["exc"] and "boom-secret" not in obj["exc"]


@pytest.mark.parametrize(("raw", "shown"), [
    ("postgresql://imperio_recovery:PW1234@127.0.0.1:5432/db", "postgresql://imperio_recovery:***@127.0.0.1:5432/db"),
    ("redis://:PW1234@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("postgresql://u@h/db?password=PW1234&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("host=h user=u password='PW 1234' dbname=d", "host=h user=u password=*** dbname=d"),
])
def test_redact_url(raw, shown):
    assert redact_url(raw) == shown


def test_watchdog_interval():
    assert notify.watchdog_interval({}) == notify.DEFAULT_WATCHDOG_INTERVAL
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == pytest.approx(10.0)
    assert notify.watchdog_interval({"WATCHDOG_USEC": "300", "WATCHDOG_PID": "1"}) == 10.0  # not ours
    ours = {"WATCHDOG_USEC": "150000", "WATCHDOG_PID": str(os.getpid())}
    assert notify.watchdog_interval(ours) == pytest.approx(0.05)
    assert notify.watchdog_interval({"WATCHDOG_USEC": "3"}) == 0.01  # floored: no busy loop
    with pytest.raises(ConfigError, match="WATCHDOG_USEC"):
        notify.watchdog_interval({"WATCHDOG_USEC": "soon"})


def test_listen_fds_for_another_pid_are_ignored_and_unset():
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "http", "OTHER": "x"}
    assert notify.listen_http_fd(env) is None
    assert env == {"OTHER": "x"}
    assert notify.listen_http_fd({}) is None


def test_unix_addresses():
    assert notify.unix_address("@owa/notify") == "\0owa/notify"
    assert notify.unix_address("/run/owa/notify.sock") == "/run/owa/notify.sock"
    with pytest.raises(ConfigError, match="NOTIFY_SOCKET: path is 201 bytes"):
        notify.Notifier("/" + "x" * 200)


async def test_notifier_without_a_listener_does_not_raise(tmp_path):
    sender = notify.Notifier(str(tmp_path / "nobody.sock"))
    assert await sender.send("READY=1") is False  # logged, not fatal
    sender.close()
    assert await notify.Notifier(None).send("READY=1") is False


async def test_notifier_sends_to_the_abstract_namespace():
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"owa-unit-{os.getpid()}"
    await receiver.bind("\0" + name)
    sender = notify.Notifier("@" + name)
    assert await sender.send("READY=1")
    assert await receiver.recv(64) == b"READY=1"
    sender.close()
    receiver.close()


def test_formatter_output_is_one_line():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter({}, Redactor()))
    log = logging.getLogger("oraclewad.services.unit-test")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("two\nlines", extra={"detail": "a\nb"})
    finally:
        log.removeHandler(handler)
    assert stream.getvalue().count("\n") == 1
