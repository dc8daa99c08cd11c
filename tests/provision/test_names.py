from __future__ import annotations

import pytest

from oraclewad.errors import InvalidArgument
from oraclewad.provision.names import (
    PG_IDENTIFIER_MAX_BYTES,
    key_glob,
    key_prefix,
    resource_name,
    tenant_key,
    validate_service,
    validate_tenant_id,
)

BAD_IDS = ['a"; drop', "x$(rm)", "a b", "1abc", "a" * 41, "", "-abc", "_abc", "a/b", "a.b", "a'b",
           "a;b", "a\nb", "imperio\x00", "ação", "pg", "PG-admin", "pg_x"]


@pytest.mark.parametrize("tid", ["a", "imperio", "Loja-2", "loja_ABC", "a" * 40, "A-b_C-9"])
def test_valid_ids(tid: str) -> None:
    validate_tenant_id(tid)


@pytest.mark.parametrize("tid", BAD_IDS)
def test_invalid_ids(tid: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_tenant_id(tid)
    with pytest.raises(InvalidArgument):
        resource_name(tid, "recovery")
    with pytest.raises(InvalidArgument):
        key_prefix(tid, "recovery")


def test_non_string_id() -> None:
    with pytest.raises(InvalidArgument):
        validate_tenant_id(None)  # type: ignore[arg-type]


def test_derivations() -> None:
    assert resource_name("Imperio", "recovery") == "imperio_recovery"
    assert resource_name("Loja-2", "broadcast") == "loja_2_broadcast"
    assert key_prefix("Imperio", "recovery") == "imperio:recovery:"
    assert tenant_key("Loja-2") == "loja_2"


def test_longest_id_fits_postgres_identifier() -> None:
    name = resource_name("a" * 40, "broadcast")
    assert len(name.encode()) <= PG_IDENTIFIER_MAX_BYTES


@pytest.mark.parametrize("svc", ["Recovery", "a;b", "", "1x", "x" * 21, "re-covery"])
def test_invalid_services(svc: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_service(svc)
    with pytest.raises(InvalidArgument):
        resource_name("imperio", svc)


def test_key_glob_matches_the_prefix_literally() -> None:
    # ACL rules, SCAN and purge share this pattern: a glob character in a prefix must not widen it.
    assert key_glob("imperio:recovery:") == "imperio:recovery:*"
    assert key_glob("a*b?[c]\\:") == "a\\*b\\?\\[c\\]\\\\:*"
