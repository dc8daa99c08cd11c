"""Releases: Python environments that can run the services. This installation is `bundled`.

Deploy, rollback and history arrive with the releases issue; until then a tenant can pin the
bundled release or one installed under releases_dir/<version>/release.toml.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from oraclewad.errors import FailedPrecondition

BUNDLED = "bundled"


@dataclass(frozen=True)
class Release:
    version: str
    python: str


def normalize(version: str) -> str:
    """`v2.1.0` and `2.1.0` name the same release."""
    return version.strip().removeprefix("v")


def installed(releases_dir: Path) -> list[str]:
    names = [BUNDLED]
    if releases_dir.is_dir():
        names += sorted(p.parent.name for p in releases_dir.glob("*/release.toml"))
    return names


def resolve(releases_dir: Path, version: str) -> Release:
    version = normalize(version)
    if version == BUNDLED:
        return Release(BUNDLED, sys.executable)
    manifest = releases_dir / version / "release.toml"
    try:
        python = tomllib.loads(manifest.read_text())["python"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise FailedPrecondition(
            f"release {version!r} is not installed ({manifest}: {e.__class__.__name__}); "
            f"installed: {', '.join(installed(releases_dir))}") from None
    return Release(version, str(python))
