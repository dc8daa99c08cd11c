"""Deploy and rollback on a real daemon: real releases, real children, requests flowing throughout."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import trio

from oraclewad import releases as registry
from oraclewad.templating import brl
from tests.harness import REPO, Daemon, alive, running_daemon, unique_id, wait_for, write_tenant
from tests.recovery.support import encode, hmac_headers, order
from tests.releases.conftest import NOTES, RENAME, SHIPPED, source_copy
from tests.support.sandbox import Sandbox

# A good release gets a deadline a loaded machine meets (its first start there may also be its
# fork template's); a deploy that waits on a release never READY says a short one itself.
GATE = '[releases]\nhealthy_deadline = 60\nmin_healthy_time = 1\n'
NEVER_READY = ("never-ready", "--healthy-deadline", "4")


class Load:
    """Requests to a service's public port, one after another on fresh connections (as shops send
    webhooks), from a thread, until stopped. Counts what answered by release."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _request(self, client: httpx.Client) -> None:
        response = client.get(self.url)
        if response.status_code != 200:
            self.failures.append(f"{response.status_code} {response.text[:200]}")
        else:
            self.answers[response.json()["release"]] += 1

    def _run(self) -> None:
        with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not self._stop.is_set():
                try:
                    self._request(client)
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                time.sleep(0.01)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class OrderLoad(Load):
    """Signed order.paid webhooks, each a new order whose thank-you text is unique (its total)."""

    def __init__(self, port: int, secret: str) -> None:
        super().__init__(port)
        self.url = f"http://127.0.0.1:{port}/webhooks/orders"
        self.secret = secret
        self.accepted: list[str] = []

    def _request(self, client: httpx.Client) -> None:
        n = len(self.accepted) + len(self.failures) + 1
        doc = order("order.paid", f"swap-{n}", total=f"{n}.00")
        body = encode(doc)
        response = client.post(self.url, content=body, headers=hmac_headers(body, self.secret))
        if response.status_code != 202:
            self.failures.append(f"{response.status_code} {response.text[:200]}")
        else:
            self.accepted.append(brl(Decimal(n)))


SANDBOXED = """
[recovery]
instances = ["{tid}-r"]
typing_delay_ms = 0
min_gap = 0
[recovery.thank_you]
templates = ["Obrigado! {{{{total}}}}"]
[broadcast]
instances = ["{tid}-b"]
[evolution]
url = "{url}"
api_key_file = "{key}"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, backend: str, releases_dir: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("rel")
    (root / "releases").symlink_to(releases_dir)
    with running_daemon(root, backend=backend, extra=GATE) as daemon:
        yield daemon


def add_tenant(daemon: Daemon) -> str:
    tid = unique_id("rel")
    write_tenant(daemon.root, tid)
    daemon.ctl("reload")
    wait_for(lambda: [s["state"] for s in status(daemon, tid)] == ["running", "running"],
             timeout=90, interval=0.2, what=f"{tid} running")
    return tid


def status(daemon: Daemon, tid: str) -> list[dict]:
    return daemon.ctl_json("status", tid)  # type: ignore[return-value]


def by_service(daemon: Daemon, tid: str) -> dict[str, dict]:
    return {s["service"]: s for s in status(daemon, tid)}


def history(daemon: Daemon, tid: str) -> list[dict]:
    return daemon.ctl_json("history", tid)  # type: ignore[return-value]


def pinned(daemon: Daemon, tid: str) -> str | None:
    for line in (daemon.root / "tenants.d" / f"{tid}.toml").read_text().splitlines():
        if line.startswith("release"):
            return line.split('"')[1]
    return None


def sandboxed_tenant(daemon: Daemon, sandbox: Sandbox) -> tuple[str, str]:
    """A tenant whose services send through the sandbox (one open instance each): (id, webhook secret)."""
    tid = unique_id("rel")
    for name in (f"{tid}-r", f"{tid}-b"):
        trio.run(sandbox.create_instance, name)
    key = daemon.root / f"{tid}.evolution.key"
    key.write_text(sandbox.api_key)
    key.chmod(0o600)
    write_tenant(daemon.root, tid, SANDBOXED.format(tid=tid, url=sandbox.url, key=key))
    daemon.ctl("reload")
    wait_for(lambda: [(s["state"], s["ready"]) for s in status(daemon, tid)] == [("running", True)] * 2,
             timeout=90, interval=0.2, what=f"{tid} running and healthy")
    return tid, daemon.ctl_json("tenant", "secrets", tid)["secret"]  # type: ignore[index]


def test_roll_to_a_second_release_and_back_while_webhooks_flow(daemon: Daemon, sandbox: Sandbox) -> None:
    tid, secret = sandboxed_tenant(daemon, sandbox)
    before = by_service(daemon, tid)
    assert {s["release"] for s in before.values()} == {"bundled"}
    with OrderLoad(before["recovery"]["port"], secret) as load:
        time.sleep(0.3)
        result = daemon.ctl("deploy", tid, "v2.0.0")        # v2.0.0 names the release 2.0.0
        after = by_service(daemon, tid)
        assert {s["release"] for s in after.values()} == {"2.0.0"}
        for svc in ("recovery", "broadcast"):
            assert after[svc]["pid"] != before[svc]["pid"] and not alive(before[svc]["pid"])
        time.sleep(0.3)
        back = daemon.ctl("rollback", tid)                   # no version: the last stable one
        time.sleep(0.3)
    # Every webhook was accepted, and each became exactly one message (old and new processes
    # overlapped during each swap; claims keep them from sending one row twice).
    assert load.failures == [] and len(load.accepted) > 20
    wait_for(lambda: len(trio.run(sandbox.messages)) >= len(load.accepted), timeout=60, interval=0.2,
             what="every accepted webhook's message")
    time.sleep(0.5)
    texts = Counter(m["text"] for m in trio.run(sandbox.messages))
    assert texts == Counter(f"Obrigado! {total}" for total in load.accepted)
    assert "phase" not in result.stdout and "ready" in result.stdout and "promoted" in result.stdout
    assert {s["release"] for s in by_service(daemon, tid).values()} == {"bundled"}
    assert "bundled" in back.stdout and pinned(daemon, tid) == "bundled"
    entries = history(daemon, tid)
    assert [(e["service"], e["from_version"], e["to_version"], e["result"], e["action"], e["stable"])
            for e in entries] == [
        ("recovery", "bundled", "2.0.0", "ok", "deploy", True),
        ("broadcast", "bundled", "2.0.0", "ok", "deploy", True),
        ("recovery", "2.0.0", "bundled", "ok", "rollback", True),
        ("broadcast", "2.0.0", "bundled", "ok", "rollback", True)]
    assert all(e["duration_s"] > 0.5 for e in entries)
    releases = {r["version"]: r for r in daemon.ctl_json("releases")}  # type: ignore[union-attr]
    assert tid in releases["bundled"]["tenants"] and tid not in releases["2.0.0"].get("tenants", [])


@pytest.fixture(scope="module")
def steady(daemon: Daemon) -> str:
    """A tenant the broken releases are thrown at (each leaves it as it was)."""
    return add_tenant(daemon)


@pytest.mark.parametrize(("version", "why"), [
    ("exits-at-start", "exited before it was ready"),
    ("never-ready", "not ready within healthy_deadline 4 s"),
    ("crashes-after-ready", "after READY, within min_healthy_time 5 s"),
])
def test_a_broken_release_is_reverted_and_the_old_processes_keep_serving(
        daemon: Daemon, steady: str, version: str, why: str) -> None:
    tid = steady
    before = by_service(daemon, tid)
    with Load(before["recovery"]["port"]) as load:
        deadline = NEVER_READY[1:] if version == "never-ready" else ()
        result = daemon.ctl("deploy", tid, version, *deadline, "--min-healthy-time", "5", check=False)
        time.sleep(0.2)
    assert result.returncode == 1, result
    assert why in result.stderr and "auto-reverted, still on bundled" in result.stderr
    after = by_service(daemon, tid)
    for svc in ("recovery", "broadcast"):
        assert after[svc]["pid"] == before[svc]["pid"] and after[svc]["release"] == "bundled"
        assert after[svc]["state"] == "running" and after[svc]["restarts"] == 0
    assert pinned(daemon, tid) is None
    # A gated process takes no connection from the shared socket (it holds its accept until
    # promoted): even the one killed by SIGKILL mid-gate dropped no client, and answered none.
    assert load.failures == []
    assert set(load.answers) == {"bundled"} and load.answers["bundled"] > 0
    entries = history(daemon, tid)[-2:]
    assert [(e["service"], e["to_version"], e["result"]) for e in entries] == [
        ("recovery", version, "reverted"), ("broadcast", version, "reverted")]
    assert any(why in e["reason"] for e in entries)


def test_a_crash_looping_service_takes_a_fixed_release_and_a_broken_one_is_reverted(daemon: Daemon) -> None:
    # Pinned to a release that dies at start: both services crash-loop in backoff.
    tid = unique_id("rel")
    write_tenant(daemon.root, tid, 'release = "exits-at-start"\n')
    daemon.ctl("reload")
    wait_for(lambda: all(s["state"] in ("backoff", "degraded") and s["restarts"] >= 1
                         for s in status(daemon, tid)) and len(status(daemon, tid)) == 2,
             timeout=60, interval=0.2, what=f"{tid} crash-looping")
    # Another broken release: gated like any swap, it fails and the old release is put back.
    failed = daemon.ctl("deploy", tid, *NEVER_READY, check=False)
    assert failed.returncode == 1 and "auto-reverted, still on exits-at-start" in failed.stderr, failed
    assert pinned(daemon, tid) == "exits-at-start"
    assert {s["release"] for s in status(daemon, tid)} == {"exits-at-start"}
    # The fix: no backoff wait, no old process needed; it runs, passes its gate, and is pinned.
    fixed = daemon.ctl("deploy", tid, "2.0.0", "--min-healthy-time", "1")
    assert "starts in its place" in fixed.stdout and "promoted" in fixed.stdout
    after = status(daemon, tid)
    assert {(s["state"], s["release"]) for s in after} == {("running", "2.0.0")}
    assert pinned(daemon, tid) == "2.0.0"
    entries = history(daemon, tid)
    assert [(e["service"], e["from_version"], e["to_version"], e["result"]) for e in entries] == [
        ("recovery", "exits-at-start", "never-ready", "reverted"),
        ("broadcast", "exits-at-start", "never-ready", "reverted"),
        ("recovery", "exits-at-start", "2.0.0", "ok"), ("broadcast", "exits-at-start", "2.0.0", "ok")]
    # And it serves.
    port = {s["service"]: s["port"] for s in after}["recovery"]
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).json()["release"] == "2.0.0"


def test_fleet_rollout_with_a_canary_halts_on_a_broken_release(daemon: Daemon) -> None:
    tids = sorted(add_tenant(daemon) for _ in range(3))
    # Other tests' tenants are in this daemon too: the plan covers every tenant not on the version.
    plan = daemon.ctl("deploy", "--all", "exits-at-start", "--canary", "1", "--max-parallel", "2",
                      "--dry-run")
    assert "dry run" in plan.stdout and "canary" in plan.stdout
    assert all(history(daemon, t) == [] for t in tids)

    result = daemon.ctl("deploy", "--all", "exits-at-start", "--canary", "1", "--max-parallel", "2",
                        check=False)
    assert result.returncode == 1 and "rollout halted at the first failure" in result.stderr
    assert "0 moved to exits-at-start" in result.stderr and "untouched:" in result.stderr
    touched = [t for t in tids if history(daemon, t)]
    assert len(touched) <= 1      # only the canary (if it sorted first) was tried
    for t in tids:
        assert {s["release"] for s in status(daemon, t)} == {"bundled"} and pinned(daemon, t) is None


def test_rollback_refused_when_the_old_release_cannot_read_the_schema(daemon: Daemon) -> None:
    tid = add_tenant(daemon)
    daemon.ctl("deploy", tid, "3.0.0", "--min-healthy-time", "0")
    # 3.0.0 added NOTES (declared backward compatible): 2.0.0 may still run on it.
    daemon.ctl("deploy", tid, "2.0.0", "--min-healthy-time", "0")
    daemon.ctl("deploy", tid, "4.0.0", "--min-healthy-time", "0")
    pids = {s["service"]: s["pid"] for s in status(daemon, tid)}
    refused = daemon.ctl("rollback", tid, "2.0.0", check=False)
    assert refused.returncode == 1
    assert "release 2.0.0 cannot read the schema" in refused.stderr and RENAME in refused.stderr
    assert NOTES not in refused.stderr
    assert {s["service"]: s["pid"] for s in status(daemon, tid)} == pids and pinned(daemon, tid) == "4.0.0"
    assert history(daemon, tid)[-1]["result"] == "refused"


def test_history_survives_a_daemon_restart_and_a_release_in_use_is_not_removed(daemon: Daemon) -> None:
    tid = add_tenant(daemon)
    daemon.ctl("deploy", tid, "2.0.0", "--min-healthy-time", "0")
    daemon.ctl("deploy", tid, "exits-at-start", check=False)
    before = history(daemon, tid)
    assert [e["result"] for e in before] == ["ok", "ok", "reverted", "reverted"]
    removed = daemon.ctl("release", "remove", "2.0.0", check=False)
    assert removed.returncode == 1 and "in use by" in removed.stderr and tid in removed.stderr

    daemon.stop()
    daemon.start()
    assert history(daemon, tid) == before
    wait_for(lambda: {s["state"] for s in status(daemon, tid)} == {"running"}, timeout=60, interval=0.2)
    assert {s["release"] for s in status(daemon, tid)} == {"2.0.0"}     # the pin holds
    text = daemon.ctl("history", tid).stdout
    assert "exited before it was ready" in text and "2.0.0" in text


def test_install_a_release_from_a_source_folder_and_remove_it(daemon: Daemon) -> None:
    bad = daemon.ctl("release", "install", str(daemon.root), "--version", "9.0.0", check=False)
    assert bad.returncode == 1 and "neither a wheel (.whl) nor a source folder" in bad.stderr
    bad = daemon.ctl("release", "install", str(REPO), "--version", "../x", check=False)
    assert bad.returncode == 1 and "is not a release version" in bad.stderr

    # A stale build/ in the folder (a migration deleted since) must not ship.
    source = source_copy(daemon.root, "src", {})
    stale = source / "build" / "lib" / "oraclewad" / "services" / "recovery" / "migrations"
    stale.mkdir(parents=True)
    (stale / f"{SHIPPED + 1:04d}_deleted_since.sql").write_text("SELECT 1;\n")
    out = daemon.ctl("release", "install", str(source), "--version", "v9.0.0", "--share-packages",
                     timeout=300).stdout
    assert "installed release 9.0.0" in out and f"recovery 1-{SHIPPED}" in out
    listed = {r["version"]: r for r in daemon.ctl_json("releases")}  # type: ignore[union-attr]
    broadcast = registry.schema_of(registry.bundled().migrations["broadcast"])
    assert listed["9.0.0"]["schema"] == {"recovery": SHIPPED, "broadcast": broadcast}
    assert Path(listed["9.0.0"]["python"]).exists()
    again = daemon.ctl("release", "install", str(REPO), "--version", "9.0.0", check=False)
    assert again.returncode == 1 and "already installed" in again.stderr

    assert "removed release 9.0.0" in daemon.ctl("release", "remove", "9.0.0").stdout
    assert "9.0.0" not in {r["version"] for r in daemon.ctl_json("releases")}  # type: ignore[union-attr]
    assert not Path(listed["9.0.0"]["path"]).exists()


def test_a_failing_migration_reverts_with_the_database_untouched(daemon: Daemon, steady: str) -> None:
    before = by_service(daemon, steady)
    result = daemon.ctl("deploy", steady, "bad-migration", check=False)
    assert result.returncode == 1
    assert "recovery: migration failed, database unchanged" in result.stderr
    assert "no_such_function" in result.stderr
    assert "still on bundled" in result.stderr
    after = by_service(daemon, steady)
    assert {s: v["pid"] for s, v in after.items()} == {s: v["pid"] for s, v in before.items()}
    health = daemon.ctl_json("health", steady)
    assert all(h["status"] == "ok" for h in health)     # schema check: still exactly 0001, no half_done
    assert history(daemon, steady)[-1]["result"] == "reverted"
