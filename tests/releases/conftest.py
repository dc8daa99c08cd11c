"""Releases built once per session: real environments with this package, plus broken ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from oraclewad import releases
from tests.harness import REPO

COMPATIBLE = "-- adds a table only: older releases never read it\n-- backward-compatible: yes\n"
# The test releases' own migrations come after the highest one recovery ships.
SHIPPED = releases.schema_of(releases.bundled().migrations["recovery"])
NOTES = f"{SHIPPED + 1:04d}_notes"
RENAME = f"{SHIPPED + 2:04d}_rename"
# Its sitecustomize kills the service 3 s after READY=1 (see there).
CRASH_AFTER_READY = Path(__file__).resolve().parent / "crash_after_ready"


def build(releases_dir: Path, source: Path, version: str) -> releases.Release:
    """What `oraclectl release install --share-packages` runs, called directly (no daemon needed)."""
    target, steps = releases.build_plan(releases_dir, source, version, share_packages=True)
    output = ""
    for i, step in enumerate(steps):
        result = subprocess.run(step.argv, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{step.what}: {result.stderr[-2000:]}"
        if i == 0:
            releases.share_site_packages(target)
        output = result.stdout
    return releases.finish_build(target, version, output, source)


def source_copy(root: Path, name: str, extra_migrations: dict[str, str]) -> Path:
    """This worktree's package sources (not its .venv) with extra recovery migrations."""
    dest = root / name
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for part in ("oraclewad", "oraclectl"):
        shutil.copytree(REPO / part, dest / part, ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, dest / part)
    for filename, sql in extra_migrations.items():
        (dest / "oraclewad" / "services" / "recovery" / "migrations" / filename).write_text(sql)
    return dest


def broken(releases_dir: Path, version: str, script: str, migrations: dict[str, Path] | None = None) -> None:
    """A release whose interpreter is a wrapper misbehaving around the real one. Its fork template
    refuses to start, so its services are exec'd (through the wrapper) in fork mode too."""
    directory = releases_dir / version
    directory.mkdir(parents=True)
    wrapper = directory / "python"
    no_template = ('case "$*" in *oraclewad.services.template*) echo "no template in this release" >&2; '
                   'exit 1;; esac\n')
    wrapper.write_text(f"#!/bin/sh\n{no_template}{script.replace('{python}', sys.executable)}\n")
    wrapper.chmod(0o755)
    bundled = releases.bundled()
    dirs = {**bundled.migrations, **(migrations or {})}
    schema = {s: releases.schema_of(d) for s, d in dirs.items()}
    releases.write_manifest(directory, releases.Release(version, str(wrapper), schema, dirs))


def failing_migrations(root: Path) -> Path:
    """recovery's migrations plus one that adds a table and then fails (beside a copy of the
    services' shared SQL, which the migrations include by a relative path)."""
    shipped = releases.bundled().migrations["recovery"]
    d = root / "bad" / "recovery" / "migrations"
    shutil.copytree(shipped, d)
    shutil.copytree(shipped.parents[1] / "sql", root / "bad" / "sql")
    (d / f"{SHIPPED + 1:04d}_half_done.sql").write_text(
        "CREATE TABLE half_done (x int);\nSELECT no_such_function();\n")
    return d


@pytest.fixture(scope="session")
def releases_dir() -> Iterator[Path]:
    """2.0.0 (this code), 3.0.0 (+ a recovery migration declared backward compatible), 4.0.0 (+ one
    that is not), and three broken releases."""
    root = Path(tempfile.mkdtemp(prefix="owarel"))
    out = root / "releases"
    out.mkdir()
    sources = {
        "2.0.0": REPO,
        "3.0.0": source_copy(root, "src3", {f"{NOTES}.sql": COMPATIBLE + "CREATE TABLE notes (x text);\n"}),
        "4.0.0": source_copy(root, "src4", {f"{NOTES}.sql": COMPATIBLE + "CREATE TABLE notes (x text);\n",
                                            f"{RENAME}.sql": "ALTER TABLE notes RENAME COLUMN x TO y;\n"}),
    }
    with ThreadPoolExecutor(3) as pool:
        for future in [pool.submit(build, out, src, v) for v, src in sources.items()]:
            future.result()
    broken(out, "exits-at-start", 'echo "this release is broken" >&2; exit 3')
    broken(out, "never-ready", "unset NOTIFY_SOCKET\nexec {python} \"$@\"")
    broken(out, "crashes-after-ready", f'export PYTHONPATH={CRASH_AFTER_READY}\nexec {{python}} "$@"')
    broken(out, "bad-migration", 'exec {python} "$@"', {"recovery": failing_migrations(root)})
    yield out
    shutil.rmtree(root, ignore_errors=True)
