"""The Evolution sandbox as a real process, for tests and bench scripts.

`SandboxProcess.start()` runs `python -m oraclewad.services.sandbox` on a free loopback port; the
pytest fixtures in tests/conftest.py start one per session and reset it before each test.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

SETPRIV = shutil.which("setpriv")
_LISTENING = re.compile(r"listening on (http://\S+)")


@dataclass
class SandboxProcess:
    url: str
    api_key: str
    process: subprocess.Popen[bytes]
    log: Path
    _dir: Path = field(repr=False)

    @classmethod
    def start(cls, *args: str, api_key: str | None = None, timeout: float = 20.0) -> SandboxProcess:
        api_key = api_key or "sandbox-" + secrets.token_hex(8)
        workdir = Path(tempfile.mkdtemp(prefix="owa-sandbox-"))
        log = workdir / "sandbox.log"
        # Dies with the test process even on a crash (pdeathsig), and never outlives stop().
        prefix = [SETPRIV, "--pdeathsig", "KILL", "--"] if SETPRIV else []
        argv = [*prefix, sys.executable, "-m", "oraclewad.services.sandbox", "--listen", "127.0.0.1:0",
                "--webhook-retry-initial", "0.2", *args]
        env = {**os.environ, "OWA_SANDBOX_API_KEY": api_key}
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                       start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (found := _LISTENING.search(log.read_text(errors="replace"))) is not None:
                return cls(found.group(1), api_key, process, log, workdir)
            if process.poll() is not None:
                break
            time.sleep(0.02)
        process.kill()
        process.wait()
        text = log.read_text(errors="replace")
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"the sandbox did not start: {text[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def reset(self) -> None:
        httpx.post(f"{self.url}/_sandbox/reset", timeout=5).raise_for_status()


class Sandbox:
    """A test's view of the running sandbox: its address and key, and its /_sandbox/ controls."""

    def __init__(self, process: SandboxProcess) -> None:
        self.process = process
        self.url = process.url
        self.api_key = process.api_key

    async def _control(self, method: str, path: str, body: Any = None) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            response = await http.request(method, f"/_sandbox/{path}", json=body)
        if response.status_code >= 400:
            raise AssertionError(f"sandbox {method} {path}: {response.status_code} {response.text}")
        return response.json()

    async def create_instance(self, name: str, state: str = "open", *, token: str | None = None,
                              webhook: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "state": state}
        if token:
            body["token"] = token
        if webhook is not None:
            body["webhook"] = webhook
        return await self._control("POST", "instances", body)

    async def set_state(self, instance: str, state: str, status_reason: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"state": state}
        if status_reason is not None:
            body["statusReason"] = status_reason
        return await self._control("POST", f"instances/{instance}/state", body)

    async def messages(self, instance: str | None = None) -> list[dict[str, Any]]:
        path = "messages" + (f"?instance={instance}" if instance else "")
        return await self._control("GET", path)

    async def send_attempts(self) -> dict[str, int]:
        """sendText calls per number (digits) that got as far as the WhatsApp lookup."""
        return await self._control("GET", "attempts")

    async def set_number(self, number: str, exists: bool) -> None:
        await self._control("POST", "numbers", {"number": number, "exists": exists})

    async def fault(self, mode: str, count: int = 1, instance: str | None = None) -> None:
        await self._control("POST", "faults", {"mode": mode, "count": count, "instance": instance})

    async def clear_faults(self) -> None:
        await self._control("DELETE", "faults")

    async def ack(self, key_id: str, status: str) -> None:
        await self._control("POST", "acks", {"keyId": key_id, "status": status})

    async def inject_upsert(self, instance: str, sender: str, text: str, *, from_me: bool = False,
                            lid: bool | str = False) -> dict[str, Any]:
        return await self._control("POST", "inject/upsert", {"instance": instance, "from": sender,
                                                             "text": text, "fromMe": from_me, "lid": lid})

    async def deliveries(self) -> list[dict[str, Any]]:
        return await self._control("GET", "webhooks")
