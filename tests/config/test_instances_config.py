"""Tenant files: each service lists its own Evolution instances, and the lists never overlap."""

from __future__ import annotations

from pathlib import Path

from oraclewad.settings import load_settings
from oraclewad.tenants.loader import load_tenants
from tests.harness import write_config, write_tenant


def load(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    settings = load_settings(write_config(tmp_path))
    write_tenant(tmp_path, "shop", body)
    loaded = load_tenants(settings.tenants_dir, settings.policy)
    return loaded.tenants.get("shop"), "\n".join(str(p) for p in loaded.problems)


def test_each_service_gets_its_own_instances(tmp_path: Path) -> None:
    tenant, problems = load(tmp_path, '[recovery]\ninstances = ["shop-1"]\n[broadcast]\n'
                                      'instances = ["shop-2", "shop-3"]\n[evolution]\napi_version = 1\n')
    assert problems == ""
    assert tenant.service("recovery").instances == ("shop-1",)
    assert tenant.service("broadcast").instances == ("shop-2", "shop-3")
    assert tenant.evolution.api_version == 1


def test_an_instance_in_both_lists_is_a_problem_naming_both(tmp_path: Path) -> None:
    tenant, problems = load(tmp_path, '[recovery]\ninstances = ["shop-1"]\n[broadcast]\n'
                                      'instances = ["shop-2", "shop-1"]\n')
    assert tenant is None
    assert "broadcast.instances: 'shop-1' is also in [recovery] instances" in problems
    assert "remove it from recovery.instances or broadcast.instances" in problems


def test_instance_list_mistakes(tmp_path: Path) -> None:
    _, problems = load(tmp_path, '[recovery]\ninstances = ["a", "a", "bad name", 3]\n'
                                 '[evolution]\ninstances = ["x"]\napi_version = 3\n')
    for expected in ("recovery.instances: 'a' is listed twice",
                     "recovery.instances: 'bad name' is not an instance name",
                     "recovery.instances: 3 is not an instance name",
                     "evolution.instances: moved: each service lists its own instances",
                     "evolution.api_version: must be 2 (Evolution v2) or 1 (Evolution v1.8), got 3"):
        assert expected in problems


def test_api_version_spellings(tmp_path: Path) -> None:
    for spelling, expected in (("2", 2), ('"v1"', 1), ('"1"', 1)):
        tenant, problems = load(tmp_path, f"[evolution]\napi_version = {spelling}\n")
        assert problems == "" and tenant.evolution.api_version == expected
    _, problems = load(tmp_path, "[evolution]\napi_version = true\n")
    assert "evolution.api_version: must be 2" in problems
