"""[broadcast] send_timeout in the tenant file: default, checked with the field and the fix, typos
get a did-you-mean, and the value reaches the broadcast child's config."""

from __future__ import annotations

from pathlib import Path

from oraclewad.settings import load_settings
from oraclewad.tenants.loader import load_tenants
from tests.harness import write_config, write_tenant


def load(tmp_path: Path, body: str) -> tuple[dict, str]:
    settings = load_settings(write_config(tmp_path))
    write_tenant(tmp_path, "loja", body)
    loaded = load_tenants(settings.tenants_dir, settings.policy)
    return loaded.tenants, "\n".join(str(p) for p in loaded.problems)


def test_send_timeout_defaults_to_30_seconds_and_takes_the_tenants_value(tmp_path: Path) -> None:
    tenants, problems = load(tmp_path, "")
    assert not problems and tenants["loja"].broadcast == {"send_timeout": 30.0}
    tenants, problems = load(tmp_path, "[broadcast]\nsend_timeout = 12.5\n")
    assert not problems and tenants["loja"].broadcast == {"send_timeout": 12.5}


def test_a_bad_send_timeout_names_the_field_and_the_fix(tmp_path: Path) -> None:
    for bad in ('"30s"', "0", "601", "true"):
        tenants, problems = load(tmp_path, f"[broadcast]\nsend_timeout = {bad}\n")
        assert "loja" not in tenants
        assert "broadcast.send_timeout: must be a number of seconds from 1 to 600" in problems, bad
        assert "e.g. send_timeout = 30" in problems


def test_a_misspelt_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    tenants, problems = load(tmp_path, "[broadcast]\nsend_timout = 10\n")
    assert "loja" not in tenants
    assert "broadcast.send_timout: unknown key: did you mean 'send_timeout'?" in problems
