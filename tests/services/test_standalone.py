"""`OWA_CONFIG=x.json python -m oraclewad.services.<service>`: no daemon, no fd 3, no notify socket."""

from __future__ import annotations

import signal

import httpx
import pytest

from oraclewad import childconfig
from tests.services.helpers import base_env, listening_socket, write_config


@pytest.mark.parametrize("service", ["recovery", "broadcast"])
async def test_standalone_binds_the_configured_port(launch, workdir, service):
    config = {"tenant": "imperio", "service": service, "http": {"host": "127.0.0.1", "port": 0},
              "templates": {"thanks": "Obrigado!"},
              # A newer daemon's config (a newer schema): its unknown key is kept, not refused.
              "schema": childconfig.SCHEMA + 1, "future_key": {"from": "a newer daemon"}}
    # No OWA_TENANT/OWA_SERVICE either: the config names them.
    env = base_env(OWA_CONFIG=str(write_config(workdir, config)))
    child = launch(env, module=f"oraclewad.services.{service}")

    ready = await child.wait_log("ready")
    (url,) = ready["http"]
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
    assert ready["admin_socket"] is None
    assert ready["unknown_config_keys"] == ["future_key"]  # tolerated, so rollbacks still start
    async with httpx.AsyncClient(base_url=url) as client:
        index = await client.get("/")
        post = await client.post("/")
    body = index.json()
    assert index.status_code == 200 and body["service"] == service and body["tenant"] == "imperio"
    assert body["release"] == "unknown" and service in body["note"]
    assert post.status_code == 405 and post.json()["error"] == "Method Not Allowed"

    child.signal(signal.SIGINT)
    assert await child.wait() == 0
    assert all(r["service"] == service and r["tenant"] == "imperio" for r in child.records)


async def test_port_in_use_exits_71_naming_the_address(launch, workdir):
    taken = listening_socket()
    port = taken.getsockname()[1]
    config = {"tenant": "imperio", "http": {"host": "127.0.0.1", "port": port}}
    child = launch(base_env(OWA_CONFIG=str(write_config(workdir, config))))
    assert await child.wait() == 71
    assert child.stderr.decode().strip() == f"http: cannot listen on 127.0.0.1:{port}: Address already in use"
    taken.close()
