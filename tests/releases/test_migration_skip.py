"""Which swaps need no migration run: the databases hold every migration of the target release."""

from __future__ import annotations

from pathlib import Path

from oraclewad.deploy import _all_applied
from oraclewad.migrations import Applied


def _release_dir(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / f"{name}.sql").write_text("SELECT 1;\n")
    return tmp_path


def test_a_release_whose_migrations_are_all_held_needs_no_run(tmp_path: Path) -> None:
    directory = _release_dir(tmp_path, "0001_init", "0002_orders")
    held = [Applied(1, "init", False), Applied(2, "orders", False), Applied(3, "later", True)]
    assert _all_applied(directory, held)        # a rollback to a release one migration behind


def test_a_missing_or_different_migration_is_applied(tmp_path: Path) -> None:
    directory = _release_dir(tmp_path, "0001_init", "0002_orders")
    assert not _all_applied(directory, [Applied(1, "init", False)])
    # Same version, another name: migrate() must see it (and refuse it with its reason).
    assert not _all_applied(directory, [Applied(1, "init", False), Applied(2, "renamed", False)])
    assert not _all_applied(tmp_path / "missing", [Applied(1, "init", False)])
