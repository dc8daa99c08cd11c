"""The proto's enums (oraclewad._proto.vocabulary) and the daemon's words are the same, both ways."""

from __future__ import annotations

import pytest

from oraclewad._proto.oraclewa.v1 import control_pb2 as pb
from oraclewad._proto.vocabulary import service_enum, service_name, state_enum, state_name
from oraclewad.control.bridge import RpcFailure
from oraclewad.control.servicer import event_message, new_tenant, service_state
from oraclewad.operations import EventView, ServiceView
from oraclewad.supervisor.status import State
from oraclewad.tenants.ids import SERVICES


def test_every_state_has_its_enum_and_back() -> None:
    assert sorted(state_enum(s) for s in State) == sorted(set(pb.State.values()) - {pb.STATE_UNSPECIFIED})
    assert [state_name(state_enum(s)) for s in State] == [str(s) for s in State]
    assert state_enum("") == pb.STATE_UNSPECIFIED and state_name(pb.STATE_UNSPECIFIED) == ""
    assert state_name(99) == ""         # a state a newer daemon added: no crash, no guess


def test_every_service_has_its_enum_and_a_host_program_has_none() -> None:
    assert sorted(service_enum(s) for s in SERVICES) == sorted(set(pb.Service.values()) - {0})
    assert [service_name(service_enum(s)) for s in SERVICES] == list(SERVICES)
    assert service_enum("sandbox") == service_enum("Recovery") == pb.SERVICE_UNSPECIFIED
    assert service_name(pb.SERVICE_UNSPECIFIED) == service_name(99) == ""


def test_answers_carry_both_the_name_and_the_enum() -> None:
    view = ServiceView(tenant="t", service="broadcast", state=State.DEGRADED, pid=None, uptime_s=None,
                       restarts=3, ready=False, port=None, release="1.0", message="breaker")
    msg = service_state(view)
    assert (msg.service, msg.service_enum) == ("broadcast", pb.SERVICE_BROADCAST)
    assert (msg.state, msg.state_enum) == ("degraded", pb.STATE_DEGRADED)
    event = event_message(EventView(ts=1.0, tenant="t", service="recovery", kind="state", state="backoff"))
    assert event.state_enum == pb.STATE_BACKOFF
    assert event_message(EventView(ts=1.0, tenant="t", service="", kind="reload")).state_enum == 0


def test_a_new_tenant_names_its_services_by_enum_or_by_name() -> None:
    by_enum = new_tenant(pb.NewTenant(id="a", service_enums=[pb.SERVICE_BROADCAST]))
    assert by_enum.services == ("broadcast",)
    assert new_tenant(pb.NewTenant(id="a", services=["recovery"])).services == ("recovery",)
    assert new_tenant(pb.NewTenant(id="a")).services == SERVICES
    for bad in (pb.NewTenant(id="a", service_enums=[pb.SERVICE_UNSPECIFIED]),
                pb.NewTenant(id="a", service_enums=[42]),
                pb.NewTenant(id="a", services=["shop"])):
        with pytest.raises(RpcFailure) as info:
            new_tenant(bad)
        assert "services" in str(info.value) and "recovery and/or broadcast" in str(info.value)
    with pytest.raises(RpcFailure, match="twice"):
        new_tenant(pb.NewTenant(id="a", service_enums=[pb.SERVICE_RECOVERY, pb.SERVICE_RECOVERY]))
