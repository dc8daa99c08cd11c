"""Deploy and rollback on a real daemon: real releases, real children, requests flowing throughout."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import REPO, Daemon, alive, running_daemon, unique_id, wait_for, write_tenant

GATE = '[releases]\nhealthy_deadline = 4\nmin_healthy_time = 1\n'


class Load:
    """Requests to a service's public port, one after another on fresh connections (as shops send
    webhooks), from a thread, until stopped. Counts what answered by release."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(self.url)
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        self.answers[response.json()["release"]] += 1
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                time.sleep(0.01)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


def test_roll_to_a_second_release_and_back_while_requests_flow(daemon: Daemon) -> None:
    tid = add_tenant(daemon)
    before = by_service(daemon, tid)
    assert {s["release"] for s in before.values()} == {"bundled"}
    with Load(before["recovery"]["port"]) as load:
        time.sleep(0.3)
        result = daemon.ctl("deploy", tid, "v2.0.0")        # v2.0.0 names the release 2.0.0
        after = by_service(daemon, tid)
        assert {s["release"] for s in after.values()} == {"2.0.0"}
        for svc in ("recovery", "broadcast"):
            assert after[svc]["pid"] != before[svc]["pid"] and not alive(before[svc]["pid"])
        time.sleep(0.3)
        back = daemon.ctl("rollback", tid)                   # no version: the last stable one
        time.sleep(0.3)
    assert load.failures == []
    assert load.answers["bundled"] > 0 and load.answers["2.0.0"] > 0
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
    ("crashes-after-3s", "after READY, within min_healthy_time 5 s"),
])
def test_a_broken_release_is_reverted_and_the_old_processes_keep_serving(
        daemon: Daemon, steady: str, version: str, why: str) -> None:
    tid = steady
    before = by_service(daemon, tid)
    with Load(before["recovery"]["port"]) as load:
        result = daemon.ctl("deploy", tid, version, "--min-healthy-time", "5", check=False)
        time.sleep(0.2)
    assert result.returncode == 1, result
    assert why in result.stderr and "auto-reverted, still on bundled" in result.stderr
    after = by_service(daemon, tid)
    for svc in ("recovery", "broadcast"):
        assert after[svc]["pid"] == before[svc]["pid"] and after[svc]["release"] == "bundled"
        assert after[svc]["state"] == "running" and after[svc]["restarts"] == 0
    assert pinned(daemon, tid) is None
    # A new process shares the socket while it is gated, so it may have answered some; none failed.
    assert load.failures == [] and load.answers["bundled"] > 0
    entries = history(daemon, tid)[-2:]
    assert [(e["service"], e["to_version"], e["result"]) for e in entries] == [
        ("recovery", version, "reverted"), ("broadcast", version, "reverted")]
    assert any(why in e["reason"] for e in entries)


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
    # 3.0.0 added 0004 (declared backward compatible): 2.0.0 may still run on it.
    daemon.ctl("deploy", tid, "2.0.0", "--min-healthy-time", "0")
    daemon.ctl("deploy", tid, "4.0.0", "--min-healthy-time", "0")
    pids = {s["service"]: s["pid"] for s in status(daemon, tid)}
    refused = daemon.ctl("rollback", tid, "2.0.0", check=False)
    assert refused.returncode == 1
    assert "release 2.0.0 cannot read the schema" in refused.stderr and "0005_rename" in refused.stderr
    assert "0004_notes" not in refused.stderr
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

    out = daemon.ctl("release", "install", str(REPO), "--version", "v9.0.0", "--share-packages",
                     timeout=300).stdout
    assert "installed release 9.0.0" in out and "recovery 1-3" in out
    listed = {r["version"]: r for r in daemon.ctl_json("releases")}  # type: ignore[union-attr]
    assert listed["9.0.0"]["schema"] == {"recovery": 3, "broadcast": 3}
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
