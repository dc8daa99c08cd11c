"""Releases: Python environments that can run the services, and each tenant's swap history.

A release lives in `releases_dir/<version>/release.toml`:

    version = "2.1.0"
    python = "/var/lib/oraclewa/releases/2.1.0/venv/bin/python"
    [schema]            # highest migration each service ships (it reads 1..N, and newer
    recovery = 3        # migrations only when they are declared backward compatible)
    broadcast = 1
    [migrations]        # where the daemon reads that release's migration files
    recovery = ".../site-packages/oraclewad/services/recovery/migrations"

This installation is always there as the release `bundled`. `v2.1.0` and `2.1.0` name the same
release: `normalize()` is the one rule, applied on the daemon side to everything that names one.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from oraclewad.errors import FailedPrecondition, InvalidArgument
from oraclewad.files import write_atomic
from oraclewad.tenants.ids import SERVICES

BUNDLED = "bundled"
SERVICES_PACKAGE = Path(__file__).parent / "services"
HISTORY_KEEP = 50
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_MIGRATION = re.compile(r"^(\d{4})_[A-Za-z0-9][A-Za-z0-9_-]*\.sql$")


@dataclass(frozen=True)
class Release:
    version: str
    python: str
    # Highest migration version per service; None: the release does not say (not checked).
    schema: Mapping[str, int] | None = None
    migrations: Mapping[str, Path] = field(default_factory=dict)
    path: Path | None = None            # its directory (None for bundled)

    @property
    def bundled(self) -> bool:
        return self.version == BUNDLED


def normalize(version: str) -> str:
    """`v2.1.0`, `V2.1.0` and ` 2.1.0 ` name the release `2.1.0`; `vnext` stays `vnext`."""
    version = version.strip()
    return version[1:] if re.match(r"[vV]\d", version) else version


def check_version(version: str, field_name: str = "version") -> str:
    """The normalised version, or InvalidArgument naming the field and the rule."""
    version = normalize(version)
    if not _VERSION.match(version):
        raise InvalidArgument(f"{version!r} is not a release version: use letters, digits, '.', '_', "
                              "'+' or '-' (at most 64), e.g. 2.1.0", field=field_name)
    return version


def schema_of(migrations_dir: Path) -> int:
    """Highest NNNN of the migration files in a directory (0 when it has none)."""
    try:
        names = os.listdir(migrations_dir)
    except FileNotFoundError:
        return 0
    return max((int(m[1]) for n in names if (m := _MIGRATION.match(n))), default=0)


@functools.cache
def bundled() -> Release:
    dirs = {s: SERVICES_PACKAGE / s / "migrations" for s in SERVICES}
    return Release(BUNDLED, sys.executable, {s: schema_of(d) for s, d in dirs.items()}, dirs)


def installed(releases_dir: Path) -> list[str]:
    names = [BUNDLED]
    if releases_dir.is_dir():
        names += sorted((p.parent.name for p in releases_dir.glob("*/release.toml")), key=_sort_key)
    return names


def _sort_key(version: str) -> tuple[Any, ...]:
    # 2.10.0 after 2.9.0: numeric parts compare as numbers.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+_]", version))


def resolve(releases_dir: Path, version: str) -> Release:
    version = normalize(version)
    if version == BUNDLED:
        return bundled()
    manifest = releases_dir / version / "release.toml"
    try:
        doc = tomllib.loads(manifest.read_text())
        python = doc["python"]
        if not isinstance(python, str) or not python:
            raise KeyError("python")
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise FailedPrecondition(
            f"release {version!r} is not installed ({manifest}: {e.__class__.__name__}); "
            f"installed: {', '.join(installed(releases_dir))}") from None
    schema = doc.get("schema")
    if not isinstance(schema, dict) or not all(isinstance(v, int) for v in schema.values()):
        schema = None
    dirs = doc.get("migrations")
    migrations = {s: Path(d) for s, d in dirs.items() if isinstance(d, str)} if isinstance(dirs, dict) else {}
    return Release(version, python, schema, migrations, manifest.parent)


def write_manifest(directory: Path, release: Release, extra: Mapping[str, Any] | None = None) -> None:
    doc: dict[str, Any] = {"version": release.version, "python": release.python, **(extra or {})}
    if release.schema is not None:
        doc["schema"] = dict(release.schema)
    if release.migrations:
        doc["migrations"] = {s: str(p) for s, p in release.migrations.items()}
    write_atomic(directory / "release.toml", tomli_w.dumps(doc).encode(), 0o644)


# ---- building a release ------------------------------------------------------------------------

# Run by the release's own interpreter: where its migrations are, without importing the services
# (an import check runs separately, so a release that cannot import is named as such).
_PROBE = r"""
import importlib.util, json, os, re, sys
spec = importlib.util.find_spec("oraclewad")
base = list(spec.submodule_search_locations)[0]
out = {"package": base, "migrations": {}}
for svc in ("recovery", "broadcast"):
    d = os.path.join(base, "services", svc, "migrations")
    out["migrations"][svc] = d
print(json.dumps(out))
"""
IMPORT_CHECK = ("import oraclewad.services.recovery.app, oraclewad.services.broadcast.app, "
                "oraclewad.migrations")


@dataclass(frozen=True)
class BuildStep:
    """One command of a release build (run by the caller, so the daemon can run it off its loop)."""

    what: str
    argv: tuple[str, ...]


_COPY_SOURCE = ("import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], ignore=shutil.ignore_patterns("
                "'build', '*.egg-info', '.venv', '.git', 'var', '__pycache__', '.ruff_cache'))")


def build_plan(releases_dir: Path, source: Path, version: str, *, find_links: Sequence[str] = (),
               share_packages: bool = False, base_python: str | None = None) -> tuple[Path, list[BuildStep]]:
    """The directory a release will have and the commands that build it there (venv + pip).

    find_links: wheel directories; pip then installs offline from them only (--no-index).
    share_packages: the new environment also sees this installation's packages (a .pth file), so
    only what differs is installed; offline and fast, at the cost of sharing dependency versions.
    """
    version = check_version(version)
    if version == BUNDLED:
        raise InvalidArgument("`bundled` is this installation itself: pick a version such as 2.1.0",
                              field="version")
    source = source.resolve()
    if not (source.is_dir() and (source / "pyproject.toml").exists()) and not (
            source.is_file() and source.suffix == ".whl"):
        raise InvalidArgument(f"{source} is neither a wheel (.whl) nor a source folder with a pyproject.toml",
                              field="path")
    target = releases_dir / version
    if (target / "release.toml").exists():
        raise FailedPrecondition(f"release {version} is already installed at {target}: "
                                 f"`oraclectl release remove {version}` first, or pick another version")
    venv = target / "venv"
    python = str(venv / "bin" / "python")
    base = base_python or getattr(sys, "_base_executable", None) or sys.executable
    steps = [BuildStep("create the environment", (base, "-m", "venv", "--without-pip", str(venv)))]
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
           "--disable-pip-version-check", "--no-warn-script-location"]
    if find_links:
        pip += ["--no-index", *[a for d in find_links for a in ("--find-links", d)]]
    if share_packages:
        pip += ["--no-build-isolation"]     # setuptools comes from the shared packages
    if source.is_dir():
        # pip builds a folder in place, and setuptools then ships whatever a stale build/lib still
        # holds (a migration deleted since, say): build from a clean copy instead.
        copy = target / "source"
        steps.append(BuildStep("copy the source",
                               (sys.executable, "-c", _COPY_SOURCE, str(source), str(copy))))
        source = copy
    steps.append(BuildStep("install the package", (*pip, str(source))))
    # -P: the working directory must not shadow the release's own package.
    steps.append(BuildStep("check it imports", (python, "-P", "-c", IMPORT_CHECK)))
    steps.append(BuildStep("find its migrations", (python, "-P", "-c", _PROBE)))
    return target, steps


def share_site_packages(target: Path) -> None:
    """A .pth in the new venv naming this installation's site-packages (after the venv's own)."""
    mine = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    for site in (target / "venv" / "lib").glob("python*/site-packages"):
        (site / "_oraclewa_shared.pth").write_text("".join(f"{p}\n" for p in mine))


def finish_build(target: Path, version: str, probe_output: str, source: Path) -> Release:
    """Write release.toml from what the probe printed; returns the release."""
    try:
        found = json.loads(probe_output.strip().splitlines()[-1])
        dirs = {s: Path(d) for s, d in found["migrations"].items()}
    except (ValueError, KeyError, IndexError, AttributeError) as e:
        raise FailedPrecondition(f"the new release did not describe itself ({e}); output: "
                                 f"{probe_output[-300:]!r}") from None
    shutil.rmtree(target / "source", ignore_errors=True)   # the clean copy pip built from
    release = Release(check_version(version), str(target / "venv" / "bin" / "python"),
                      {s: schema_of(d) for s, d in dirs.items()}, dirs, target)
    write_manifest(target, release, {"source": str(source),
                                     "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return release


def remove(releases_dir: Path, version: str, in_use: Iterable[str]) -> Path:
    """Delete an installed release; refused while a tenant uses it (in_use names them)."""
    version = check_version(version)
    if version == BUNDLED:
        raise FailedPrecondition("the bundled release is this installation: it cannot be removed")
    users = sorted(in_use)
    if users:
        raise FailedPrecondition(f"release {version} is in use by {', '.join(users)}: deploy them to "
                                 "another release first")
    target = releases_dir / version
    if not (target / "release.toml").exists():
        raise FailedPrecondition(f"release {version!r} is not installed; installed: "
                                 f"{', '.join(installed(releases_dir))}")
    # release.toml first: a half-deleted directory is never mistaken for a release.
    (target / "release.toml").unlink()
    shutil.rmtree(target, ignore_errors=True)
    return target


# ---- history -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Swap:
    """One swap of one service: what `oraclectl history` shows."""

    ts: float                   # unix time it started
    service: str
    from_version: str
    to_version: str
    result: str                 # ok | reverted | refused
    reason: str = ""
    duration_s: float = 0.0
    stable: bool = False        # ran healthy for min_healthy_time, so rollback may return to it
    action: str = "deploy"      # deploy | rollback


class History:
    """The last HISTORY_KEEP swaps per tenant, one JSON file each under state_dir/history/."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, tenant_id: str) -> Path:
        return self.directory / f"{tenant_id.lower()}.json"

    def entries(self, tenant_id: str) -> list[Swap]:
        try:
            doc = json.loads(self._path(tenant_id).read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            return []   # unreadable history must not block a deploy; the next write replaces it
        known = set(Swap.__dataclass_fields__)
        return [Swap(**{k: v for k, v in e.items() if k in known}) for e in doc if isinstance(e, dict)]

    def add(self, tenant_id: str, swaps: Sequence[Swap]) -> None:
        entries = (self.entries(tenant_id) + list(swaps))[-HISTORY_KEEP:]
        data = json.dumps([asdict(e) for e in entries], indent=1).encode() + b"\n"
        write_atomic(self._path(tenant_id), data, 0o640)

    def last_stable_before(self, tenant_id: str, current: str) -> str | None:
        """The most recent stable release other than `current` (what a bare rollback returns to)."""
        for entry in reversed(self.entries(tenant_id)):
            if entry.result == "ok" and entry.stable and entry.to_version != current:
                return entry.to_version
            if entry.result == "ok" and entry.stable and entry.from_version != current:
                return entry.from_version
        # Nothing recorded yet: the release it ran before its first swap.
        for entry in self.entries(tenant_id):
            if entry.result == "ok" and entry.from_version != current:
                return entry.from_version
        return None
