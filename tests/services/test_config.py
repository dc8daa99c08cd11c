"""Config validation: exit 78 (EX_CONFIG) with one line naming the key and the fix."""

from __future__ import annotations

import json

import pytest

from oraclewad import childconfig
from oraclewad.services.config import ConfigError, parse
from tests.services.helpers import base_env, write_config

ENV = {"OWA_TENANT": "imperio", "OWA_SERVICE": "recovery"}


async def test_invalid_value_exits_78_naming_the_key(launch, workdir):
    config = {"tenant": "imperio", "http": {"port": "4101"}, "postgres": {"dsn": "postgresql://u:hunter2pw@h/db"}}
    child = launch(base_env(OWA_CONFIG=str(write_config(workdir, config)), OWA_TENANT="imperio"))
    assert await child.wait() == 78
    line = child.stderr.decode().strip()
    assert "\n" not in line
    assert "http.port: must be an integer, not str" in line and "fix the tenant" in line
    (record,) = child.records
    assert record["level"] == "error" and record["channel"] == "runtime" and record["exit_code"] == 78
    assert "http.port" in record["msg"]
    assert "hunter2pw" not in child.stdout + child.stderr.decode()


async def test_missing_config_file_exits_78(launch, workdir):
    child = launch(base_env(OWA_CONFIG=str(workdir / "nope.json")))
    assert await child.wait() == 78
    assert child.stderr.decode().startswith("OWA_CONFIG: cannot read ")


async def test_bad_inherited_fd_names_exit_78(launch, workdir):
    # LISTEN_FDS set but fd 3 is not open in the child: the environment lies, refuse to start.
    config = write_config(workdir, {"tenant": "imperio"})
    child = launch(base_env(OWA_CONFIG=str(config), LISTEN_FDS="1", LISTEN_FDNAMES="http"))
    assert await child.wait() == 78
    assert "LISTEN_FDS" in child.stderr.decode()


def problems(raw: dict, env: dict | None = None, need_port: bool = False) -> str:
    with pytest.raises(ConfigError) as info:
        parse(raw, "recovery", ENV if env is None else env, need_port=need_port)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_every_problem_is_reported_at_once():
    message = problems({"tenant": "imperio", "http": {"port": 70000, "host": 5},
                        "redis": {"url": "http://x", "password": 7}, "evolution": [], "log_level": "loud"})
    for key in ("http.port: must be between 0 and 65535", "http.host: must be a string",
                "redis.url: must start with redis://", "redis.password: must be a string",
                "evolution: must be an object", "log_level: must be one of"):
        assert key in message, message


@pytest.mark.parametrize(("raw", "env", "expected"), [
    ({}, {}, "tenant: is required"),
    ({"tenant": "acme"}, ENV, "tenant: is 'acme' but OWA_TENANT is 'imperio'"),
    ({"tenant": "imperio", "service": "broadcast"}, ENV, "service: is 'broadcast' but this program is"),
    ({"tenant": "imperio"}, {"OWA_SERVICE": "broadcast"}, "OWA_SERVICE: is 'broadcast'"),
    ({"tenant": "imperio", "http": {"port": True}}, ENV, "http.port: must be an integer, not bool"),
    ({"tenant": "imperio", "postgres": {}}, ENV, "postgres.dsn: is required"),
    ({"tenant": "imperio", "postgres": {"dsn": "host=x password='secretpw"}}, ENV, "postgres.dsn: is not a"),
    ({"tenant": "imperio", "postgres": {"dsn": "host=x", "pool_max": 0}}, ENV, "postgres.pool_min: needs"),
    ({"tenant": "imperio", "http": []}, ENV, "http: must be an object"),
])
def test_problem_names_the_key(raw, env, expected):
    message = problems(raw, env)
    assert expected in message, message
    assert "secretpw" not in message


def test_standalone_needs_a_port():
    assert "http.port: is required" in problems({"tenant": "imperio"}, need_port=True)


def test_defaults_and_env_identity():
    cfg = parse({"redis": {"url": "redis://127.0.0.1:6379/0"}}, "recovery", ENV, need_port=False)
    assert (cfg.tenant, cfg.service, cfg.release) == ("imperio", "recovery", "unknown")
    assert cfg.display_name == "imperio"
    assert cfg.redis is not None and cfg.redis.prefix == "imperio:recovery:"
    assert cfg.postgres is None and cfg.http_port is None and cfg.graceful_timeout == 8.0
    full = parse({"tenant": "imperio", "service": "recovery", "postgres": {"dsn": "postgresql://u:p@h:5/d",
                  "pool_max": 8}, "http": {"port": 4101, "graceful_timeout_s": 3}}, "recovery", {})
    assert full.postgres is not None and (full.postgres.pool_min, full.postgres.pool_max) == (0, 8)
    assert (full.http_port, full.graceful_timeout) == (4101, 3.0)
    assert json.dumps(full.raw)


def test_unknown_keys_are_refused_at_every_level_with_a_suggestion():
    message = problems({"tenant": "imperio", "http": {"prot": 4101},
                        "redis": {"url": "redis://x", "pasword": "x"},
                        "webhook_secrets": [{"secret": "s", "untill": 1}], "instance": ["a"]})
    for expected in ("http.prot: unknown key; did you mean port?",
                     "redis.pasword: unknown key; did you mean password?",
                     "webhook_secrets[0].untill: unknown key; did you mean until?",
                     "instance: unknown key; did you mean instances?"):
        assert expected in message, message


def test_a_config_of_a_newer_schema_keeps_its_unknown_keys():
    # A tenant rolled back to an older release under a newer daemon must still start.
    cfg = parse({"schema": childconfig.SCHEMA + 1, "tenant": "imperio", "later": {"x": 1},
                 "http": {"later_too": 1}}, "recovery", ENV, need_port=False)
    assert cfg.unknown_keys == ("http.later_too", "later")
    assert "later: unknown key" in problems({"schema": childconfig.SCHEMA, "tenant": "imperio", "later": 1})


def test_what_the_daemon_writes_the_child_reads_back():
    written = childconfig.ChildConfig(
        tenant="imperio", service="recovery", display_name="Imperio", release="1.2",
        http=childconfig.Http(host="127.0.0.1", port=4101),
        postgres=childconfig.Postgres(dsn="host=h dbname=d user=u password=p"),
        redis=childconfig.Redis(url="redis://127.0.0.1:6379/0", username="u", password="p",
                                prefix="imperio:r:"),
        evolution=childconfig.Evolution(url="http://evo", api_key="apikeyvalue", webhook_jwt_key="j"),
        instances=("imperio-1",), webhook_secrets=(childconfig.WebhookSecret("s"),),
        antiban={"gap": [30, 120]}, recovery={"steps": []})
    raw = json.loads(childconfig.encode(written))
    assert "shared" not in raw and "until" not in raw["webhook_secrets"][0]   # None: left out
    cfg = parse(raw, "recovery", ENV)
    assert cfg.schema == written
    assert (cfg.http_port, cfg.postgres, cfg.redis, cfg.evolution) == (
        4101, written.postgres, written.redis, written.evolution)
    assert "apikeyvalue" not in repr(cfg.evolution) and "password=p" not in repr(cfg.postgres)


def test_after_the_templates_warm_up_a_config_is_read_without_resolving_a_type_hint(monkeypatch):
    """The fork template calls childconfig.warm(): its children then read their config without
    compiling the schema's annotation strings again (7 ms of each forked start)."""
    import typing

    from oraclewad.services import template

    assert ("oraclewad.childconfig", "warm") in template.WARM
    childconfig.warm()

    def resolving(*args, **kwargs):
        raise AssertionError(f"a type hint was resolved after the warm-up: {args}")

    monkeypatch.setattr(typing, "get_type_hints", resolving)
    cfg = parse({"tenant": "imperio", "http": {"port": 4101},
                 "postgres": {"dsn": "postgresql://u@h/db"}, "redis": {"url": "redis://h/0"},
                 "shared": {"dsn": "postgresql://u@h/shared"},
                 "evolution": {"url": "http://e", "api_key": "k" * 8}}, "recovery", ENV)
    assert cfg.tenant == "imperio" and cfg.http_port == 4101
