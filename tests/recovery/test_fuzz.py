"""Fuzzed order webhooks against the real child: whatever arrives, the answer is a 2xx or a 4xx,
never a 500, and the child stays up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.recovery.support import SECRET, hmac_headers, order, recovery_config, standard_headers
from tests.services.helpers import listening_socket


@pytest.fixture(scope="module")
def fuzz_child(pg_admin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.services.sending import drop_database, make_database

    dsn = make_database(pg_admin)
    work = tmp_path_factory.mktemp("fuzz")
    config = Path(work / "config.json")
    config.write_text(json.dumps(recovery_config(dsn)))
    os.chmod(config, 0o600)
    sock = listening_socket()
    os.set_inheritable(sock.fileno(), True)
    env = {"PATH": os.environ.get("PATH", ""), "OWA_CONFIG": str(config), "OWA_TENANT": "imperio",
           "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}
    # fd 3 in the child must be the socket: dup it there in the child only.
    fd = sock.fileno()
    proc = subprocess.Popen([sys.executable, "-c",
                             f"import os,runpy,sys; os.dup2({fd}, 3); os.set_inheritable(3, False); "
                             "sys.argv=['recovery']; runpy.run_module('oraclewad.services.recovery', "
                             "run_name='__main__')"],
                            env=env, pass_fds=(fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.kill()
        proc.wait()
        sock.close()
        drop_database(pg_admin, dsn)
    assert proc.returncode == -9  # it was still running: nothing crashed it


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
fields = ["event", "data", "id", "product", "title", "user", "name", "phone", "email", "pixCode",
          "quantity", "total", "expirationAt", "createdAt"]


def _mutated(draw_path: list[str], value: object) -> dict:
    doc = order()
    target: dict = doc
    for key in draw_path[:-1]:
        nxt = target.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            target[key] = nxt
        target = nxt
    target[draw_path[-1]] = value
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.lists(st.sampled_from(fields), min_size=1, max_size=3), value=json_values,
       scheme=st.sampled_from(["hmac", "standard"]))
def test_signed_but_mangled_payloads_get_2xx_or_4xx(fuzz_child, path, value, scheme):
    body = json.dumps(_mutated(path, value)).encode()
    headers = hmac_headers(body) if scheme == "hmac" else standard_headers(body)
    response = httpx.post(fuzz_child + "/webhooks/orders", content=body, headers=headers, timeout=10)
    assert response.status_code in (200, 202, 422), (response.status_code, response.text)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       headers=st.dictionaries(
           st.sampled_from(["x-webhook-signature", "x-webhook-timestamp", "webhook-id", "webhook-timestamp",
                            "webhook-signature", "x-auth-webhook", "content-type"]),
           st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80), max_size=5),
       sign=st.booleans())
def test_arbitrary_bodies_and_headers_get_only_4xx(fuzz_child, body, headers, sign):
    if sign:
        headers = {**headers, **hmac_headers(body, SECRET)}
    try:
        response = httpx.post(fuzz_child + "/webhooks/orders", content=body, headers=headers, timeout=10)
    except httpx.LocalProtocolError:
        return  # a header httpx itself refuses to send
    assert response.status_code < 500, (response.status_code, response.text)
    if not sign:
        assert 400 <= response.status_code < 500
