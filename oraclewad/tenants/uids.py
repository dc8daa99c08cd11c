"""An OS user per tenant: uids allocated from [services] uid_range once and remembered.

The users need no passwd entry: the supervisor starts a tenant's services with setpriv as
uid == gid == the tenant's number, no supplementary groups and no capabilities. A uid that
the machine already knows (a passwd or group entry), root, and the daemon's own are never
handed out, so a tenant can share nothing with a real account.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from oraclewad.errors import Problem
from oraclewad.files import write_atomic
from oraclewad.tenants.ids import id_key
from oraclewad.tenants.model import Tenant


def _known(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False


class UidBook:
    """Tenant uids, kept in state_dir/uids.json so a tenant keeps its user (and file ownership)."""

    def __init__(self, path: Path, uid_range: tuple[int, int]) -> None:
        self.path = path
        self.first, self.last = uid_range
        try:
            self.remembered: dict[str, int] = json.loads(path.read_text())
        except FileNotFoundError:
            self.remembered = {}

    def assign(self, tenants: Mapping[str, Tenant], *,
               persist: bool = True) -> tuple[dict[str, int], list[Problem]]:
        """A uid for every tenant id; a tenant left without one gets a Problem."""
        uids: dict[str, int] = {}
        problems: list[Problem] = []
        taken = {uid: key for key, uid in self.remembered.items()}
        changed = False
        for tenant in tenants.values():
            key = id_key(tenant.id)
            uid = self.remembered.get(key)
            if uid is None or not self._usable(uid):
                uid = self._allocate(taken)
                if uid is None:
                    problems.append(Problem(str(tenant.source), "id",
                                            f"no free uid left in {self.first}-{self.last}: widen "
                                            "[services] uid_range"))
                    continue
                self.remembered[key] = uid
                taken[uid] = key
                changed = True
            uids[tenant.id] = uid
        if changed and persist:
            write_atomic(self.path, json.dumps(self.remembered, indent=1, sort_keys=True).encode())
        return uids, problems

    def _usable(self, uid: int) -> bool:
        return self.first <= uid <= self.last and uid not in (0, os.getuid()) and not _known(uid)

    def _allocate(self, taken: Mapping[int, str]) -> int | None:
        for uid in range(self.first, self.last + 1):
            if uid not in taken and self._usable(uid):
                return uid
        return None

    def forget(self, tenant_id: str) -> bool:
        """Drop a purged tenant's uid; True when it had one."""
        if self.remembered.pop(id_key(tenant_id), None) is None:
            return False
        write_atomic(self.path, json.dumps(self.remembered, indent=1, sort_keys=True).encode())
        return True


def closed_to_others(paths: Iterable[Path]) -> str | None:
    """Why a user with no relation to the files' owners could not run them, or None.

    Tenant users are nobody's group members, so only the "other" permission bits count: every
    folder on the way needs o+x, the files o+r (and programs o+x).
    """
    for path in paths:
        for candidate in dict.fromkeys((Path(path).absolute(), Path(path).resolve())):
            try:
                mode = os.stat(candidate).st_mode
            except OSError as e:
                return f"{candidate}: {e.strerror}"
            need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) or mode & stat.S_IXUSR else 0)
            if mode & need != need:
                return f"{candidate} is mode {stat.S_IMODE(mode):04o}"
            for folder in candidate.parents:
                fmode = os.stat(folder).st_mode
                if not fmode & stat.S_IXOTH:
                    return f"folder {folder} is mode {stat.S_IMODE(fmode):04o} (others cannot enter it)"
    return None
