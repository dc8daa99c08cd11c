"""The control plane of a REAL `oraclewad run` (tests/conftest.py's make_daemon), on its unix socket and TCP.

Slow (a real daemon with PostgreSQL and Redis), so one daemon serves many checks.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from oraclewad._proto.oraclewa.v1 import control_pb2 as pb
from oraclewad._proto.oraclewa.v1 import control_pb2_grpc as pb_grpc
from tests.control.double import free_port
from tests.harness import unique_id, wait_for

pytestmark = pytest.mark.timeout(400)


def fails(call, *args, **kw) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kw)
        if hasattr(result, "__iter__") and not isinstance(result, pb.Tenant):
            list(result)
    return info.value


def test_real_daemon_serves_every_rpc_and_the_cli(make_daemon, tmp_path: Path) -> None:
    port = free_port()
    daemon = make_daemon(extra=f'[control]\ntcp = "127.0.0.1:{port}"\n')
    daemon.start()
    channel = grpc.insecure_channel(f"unix:{daemon.socket_path}")
    stub = pb_grpc.ControlStub(channel)

    # standard health and reflection
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "oraclewa.v1.Control"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == 1
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    listing = next(reflect.ServerReflectionInfo(iter([ask])))
    assert "oraclewa.v1.Control" in [s.name for s in listing.list_services_response.service]

    # tenant add through the CLI, with a key file: waits for ready, prints where the secret went
    tid = unique_id("c")
    key = tmp_path / "evo.key"
    key.write_text("evo-secret-value\n")
    added = daemon.ctl("tenant", "add", tid, "--name", "Loja C", "--evolution-key-file", str(key),
                       "--timeout", "120", timeout=180)
    assert f"tenant {tid} added and ready" in added.stdout and "webhook URL:" in added.stdout
    assert "evo-secret-value" not in added.stdout + added.stderr
    assert (Path(daemon.root) / "tenants.d" / f"{tid}.toml").exists()

    # two concurrent adds of one id: exactly one wins
    twin = unique_id("t")
    outcomes: list[object] = []

    def add() -> None:
        request = pb.AddTenantRequest(tenant=pb.NewTenant(id=twin), wait=False)
        try:
            outcomes.append(stub.AddTenant(request, timeout=60))
        except grpc.RpcError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=add) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert len(errors) == 1 and errors[0].code() == grpc.StatusCode.ALREADY_EXISTS, outcomes

    # every unary RPC
    assert {t.id for t in stub.ListTenants(pb.ListTenantsRequest(), timeout=10).tenants} >= {tid, twin}
    view = stub.GetTenant(pb.GetTenantRequest(id=tid), timeout=10)
    assert view.name == "Loja C" and set(view.ports) == {"recovery", "broadcast"} and view.secrets_file
    rows = stub.Status(pb.StatusRequest(tenant=tid), timeout=10).services
    assert {(r.service, r.state, r.ready) for r in rows} == {("recovery", "running", True),
                                                             ("broadcast", "running", True)}
    assert all(r.HasField("pid") for r in rows)
    assert {h.service for h in stub.Health(pb.HealthRequest(tenant=tid), timeout=30).services} == {
        "recovery", "broadcast"}
    figures = stub.Metrics(pb.MetricsRequest(tenant=tid), timeout=10).services[0].figures
    assert "restarts" in figures and "uptime_s" in figures
    assert "bundled" in [r.version for r in stub.ListReleases(pb.ListReleasesRequest(), timeout=10).releases]
    stopped = stub.Stop(pb.ServiceRequest(tenant=tid, service="broadcast"), timeout=60).services
    assert [(s.service, s.state) for s in stopped] == [("broadcast", "stopped")]
    started = stub.Start(pb.ServiceRequest(tenant=tid, service="broadcast"), timeout=60).services
    assert started[0].service == "broadcast"
    stub.Restart(pb.ServiceRequest(tenant=tid, service="recovery"), timeout=60)
    reload = stub.Reload(pb.ReloadRequest(), timeout=60)
    assert f"{tid}/recovery" in list(reload.unchanged) + list(reload.restarted)
    for method, request in (("Deploy", pb.DeployRequest(tenant=tid, version="v2.1.0")),
                            ("Rollback", pb.RollbackRequest(tenant=tid)),
                            ("History", pb.HistoryRequest(tenant=tid))):
        error = fails(getattr(stub, method), request, timeout=10)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "releases issue" in error.details()
    bad = fails(stub.AddTenant, pb.AddTenantRequest(tenant=pb.NewTenant(id="9x")), timeout=10)
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.details().startswith("id: ")
    missing = fails(stub.GetTenant, pb.GetTenantRequest(id="nobody"), timeout=10)
    assert missing.code() == grpc.StatusCode.NOT_FOUND

    # streams: logs and events
    wait_for(lambda: all(r.ready for r in stub.Status(pb.StatusRequest(tenant=tid), timeout=10).services),
             what="services ready again")
    log = Path(daemon.root) / "log" / tid / "recovery" / "combined.log"
    wait_for(log.exists, what="the recovery log")
    batches = list(stub.TailLogs(pb.TailLogsRequest(tenant=tid, service="recovery", lines=5), timeout=10))
    assert batches and all(b.service == "recovery" for b in batches)
    events = list(stub.WatchEvents(pb.WatchEventsRequest(tenant=tid, recent=100), timeout=10))
    assert "tenant_added" in {e.kind for e in events} and "state" in {e.kind for e in events}

    # the CLI's table and JSON against the real daemon
    table = daemon.ctl("status", tid).stdout.splitlines()
    assert table[0].split()[:4] == ["TENANT", "SERVICE", "STATE", "PID"]
    assert len([line for line in table[1:] if line.startswith(tid)]) == 2
    assert {r["service"] for r in daemon.ctl_json("status", tid)} == {"recovery", "broadcast"}
    assert daemon.ctl_json("tenant", "show", tid)["id"] == tid
    for argv in (("tenant", "list"), ("tenant", "show", tid), ("status",), ("health", tid), ("metrics", tid),
                 ("reload",), ("releases",)):
        table_out = daemon.ctl(*argv, timeout=120).stdout
        assert table_out.strip() and not table_out.lstrip().startswith(("{", "[")), argv
        json.loads(daemon.ctl("--json", *argv, timeout=120).stdout)     # one JSON document
    for verb in ("stop", "start", "restart"):
        assert tid in daemon.ctl(verb, tid, "broadcast").stdout
        rows = daemon.ctl_json(verb, tid, "broadcast")
        assert [r["service"] for r in rows] == ["broadcast"]
        wait_for(lambda v=verb: v == "stop" or all(r["ready"] for r in daemon.ctl_json("status", tid)),
                 what=f"ready after {verb}")
    for argv in (("logs", tid, "recovery", "-n", "3"), ("events", "--tenant", tid)):
        assert daemon.ctl(*argv).stdout.strip(), argv
        assert all(json.loads(line) for line in daemon.ctl("--json", *argv).stdout.splitlines()), argv
    for argv in (("deploy", tid, "v2.1.0"), ("rollback", tid), ("history", tid)):
        refused = daemon.ctl(*argv, check=False)
        assert refused.returncode == 1 and "releases arrive with the releases issue" in refused.stderr

    # a stalled `logs -f` consumer, while the log grows, does not slow unary calls
    def latencies(count: int) -> list[float]:
        out = []
        for _ in range(count):
            t0 = time.perf_counter()
            stub.Status(pb.StatusRequest(), timeout=10)
            out.append(time.perf_counter() - t0)
            time.sleep(0.02)
        return out

    baseline = statistics.median(latencies(20))
    follower = pb_grpc.ControlStub(grpc.insecure_channel(f"unix:{daemon.socket_path}"))
    stalled = follower.TailLogs(pb.TailLogsRequest(tenant=tid, service="recovery", lines=1, follow=True))
    next(stalled)                               # open; never read again

    def grow() -> None:
        chunk = ('{"level": "info", "msg": "' + "x" * 200 + '"}\n') * 500
        with log.open("a") as f:
            for _ in range(80):
                f.write(chunk)
                f.flush()
                time.sleep(0.01)

    writer = threading.Thread(target=grow)
    writer.start()
    during = latencies(60)
    writer.join()
    stalled.cancel()
    assert statistics.median(during) < max(0.05, 5 * baseline), (baseline, during)

    # TCP: token required
    token_file = Path(daemon.root) / "state" / "secrets" / "control.token"
    token = token_file.read_text().strip()
    tcp = pb_grpc.ControlStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    for metadata in ((), (("authorization", "Bearer wrong"),)):
        error = fails(tcp.Status, pb.StatusRequest(), timeout=10, metadata=metadata)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    bearer = (("authorization", f"Bearer {token}"),)
    assert tcp.Status(pb.StatusRequest(), timeout=10, metadata=bearer).services

    removed = stub.RemoveTenant(pb.RemoveTenantRequest(id=twin), timeout=60)
    assert removed.actions

    # daemon gone: exit 3 naming the socket
    daemon.stop()
    gone = daemon.ctl("status", check=False)
    assert gone.returncode == 3 and str(daemon.socket_path) in gone.stderr
    assert "systemctl status oraclewad" in gone.stderr
