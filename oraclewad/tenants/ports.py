"""Port assignment: explicit ports win, missing ones are allocated once and remembered."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

from oraclewad.errors import Problem
from oraclewad.files import write_atomic
from oraclewad.tenants.ids import unit_name
from oraclewad.tenants.model import Tenant


class PortBook:
    """Allocated ports, kept in state_dir/ports.json so a service keeps its port across restarts.

    The daemon never writes a port into an operator's tenant file; this book is its own memory.
    """

    def __init__(self, path: Path, port_range: tuple[int, int], bind_host: str) -> None:
        self.path = path
        self.first, self.last = port_range
        self.bind_host = bind_host
        try:
            self.remembered: dict[str, int] = json.loads(path.read_text())
        except FileNotFoundError:
            self.remembered = {}

    def _bindable(self, port: int) -> bool:
        with socket.socket(socket.AF_INET6 if ":" in self.bind_host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.bind_host, port))
            except OSError:
                return False
        return True

    def tenants(self) -> set[str]:
        """Ids with a remembered port: tenants the daemon has run (removed ones until purged)."""
        return {unit.partition("/")[0] for unit in self.remembered}

    def assign(self, tenants: Mapping[str, Tenant], reserved: Iterable[int] = (),
               bound: Mapping[str, int] | None = None, *,
               persist: bool = True) -> tuple[dict[str, int], list[Problem]]:
        """Port for every tenant-service; a tenant whose explicit port clashes gets a Problem.

        A port belongs to the service that holds it (`bound`: running services) or had it
        (remembered), so a new file's explicit port never takes it over; explicit ports are
        remembered too, so a removed tenant keeps its ports until purged.
        """
        bound = dict(bound or {})
        problems: list[Problem] = []
        owners: dict[int, str] = {p: "a host program" for p in reserved}
        for unit, port in [*self.remembered.items(), *bound.items()]:
            owners[port] = unit   # a running service's port wins over a stale memory of it
        taken: dict[int, str] = {}
        ports: dict[str, int] = {}
        rejected: set[str] = set()
        self._take_explicit(tenants, owners, bound, taken, ports, rejected, problems)
        for port, unit in owners.items():
            taken.setdefault(port, unit)
        changed = False
        for tenant in tenants.values():
            if tenant.id in rejected:
                continue
            for svc in tenant.services:
                unit = unit_name(tenant.id, svc.name)
                if unit in ports:
                    if self.remembered.get(unit) != ports[unit]:
                        self.remembered[unit] = ports[unit]
                        changed = True
                    continue
                port = self.remembered.get(unit)
                if port is None or taken.get(port, unit) != unit:
                    port = self._allocate(taken, bound)
                    if port is None:
                        problems.append(Problem(str(tenant.source), f"{svc.name}.port",
                                                f"no free port left in {self.first}-{self.last}: "
                                                "widen [services] port_range"))
                        rejected.add(tenant.id)
                        break
                    self.remembered[unit] = port
                    changed = True
                taken[port] = unit
                ports[unit] = port
        if changed and persist:
            self._save()
        for tenant_id in rejected:
            for svc in tenants[tenant_id].services:
                ports.pop(unit_name(tenant_id, svc.name), None)
        return ports, problems

    def _take_explicit(self, tenants: Mapping[str, Tenant], owners: Mapping[int, str],
                       bound: Mapping[str, int], taken: dict[int, str], ports: dict[str, int],
                       rejected: set[str], problems: list[Problem]) -> None:
        """Ports the tenant files name: taken, or a Problem when another service owns them."""
        for tenant in tenants.values():
            for svc in tenant.services:
                unit = unit_name(tenant.id, svc.name)
                if svc.port is None:
                    continue
                owner, held = taken.get(svc.port), ""
                if owner is None and svc.port in owners:
                    owner = owners[svc.port]
                    held = (" (running)" if bound.get(owner) == svc.port else
                            f" (remembered in {self.path.name})" if owner in self.remembered else "")
                if owner is not None and owner != unit:
                    problems.append(Problem(str(tenant.source), f"{svc.name}.port",
                                            f"port {svc.port} belongs to {owner}{held}: "
                                            "pick another or remove the key to have one allocated"))
                    rejected.add(tenant.id)
                else:
                    taken[svc.port] = unit
                    ports[unit] = svc.port

    def _allocate(self, taken: Mapping[int, str], bound: Mapping[str, int]) -> int | None:
        held = set(bound.values())
        for port in range(self.first, self.last + 1):
            if port not in taken and port not in held and self._bindable(port):
                return port
        return None

    def forget(self, tenant_id: str) -> list[str]:
        """Drop a purged tenant's ports (every service's); returns what was freed."""
        freed = [f"{unit} port {self.remembered.pop(unit)}" for unit in sorted(self.remembered)
                 if unit.partition("/")[0] == tenant_id]
        if freed:
            self._save()
        return freed

    def _save(self) -> None:
        write_atomic(self.path, json.dumps(self.remembered, indent=1, sort_keys=True).encode())


def ephemeral_overlap(port_range: tuple[int, int],
                      proc_file: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> str | None:
    """A warning when the service ports overlap the kernel's ephemeral range: outgoing
    connections (children to PostgreSQL and Redis) may then hold a service's port when it binds."""
    try:
        low, high = (int(x) for x in proc_file.read_text().split())
    except (OSError, ValueError):
        return None
    first, last = port_range
    if first > high or last < low:
        return None
    return (f"[services] port_range {first}-{last} overlaps the kernel's ephemeral ports {low}-{high}: "
            f"a service may find its port taken by an outgoing connection; pick a range below {low}")
