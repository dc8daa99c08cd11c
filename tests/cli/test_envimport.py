"""`tenant import-env` conversion: pure functions on sample .env files of the old system."""

from __future__ import annotations

import tomllib

import pytest

from oraclectl.envimport import SECRET_PLACEHOLDER, EnvFileError, convert, parse_dotenv

IMPERIO = """\
# Império: config isolada (v3)
CLIENT_ID=imperio
CLIENT_NAME="Império Prêmios"   # display name
SERVICE_TYPE=all
BROADCAST_ISOLATED=true
RECOVERY_PORT=4001
BROADCAST_PORT=4002
RECOVERY_DB_NAME=imperio_recovery
BROADCAST_DB_NAME=oraclewa_broadcast
ANTIBAN_STRATEGY=conti_chips
ANTIBAN_DELAY_MIN=30000
ANTIBAN_DELAY_MAX=120000
ANTIBAN_BATCH_SIZE=20
ANTIBAN_PAUSE_MIN=600000
ANTIBAN_PAUSE_MAX=1200000
CHIP_WARMUP_DAY1_MIN=10
CHIP_WARMUP_DAY1_MAX=20
CHIP_WARMUP_DAY2_MIN=30
CHIP_WARMUP_DAY2_MAX=40
CHIP_WARMUP_DAY3_MIN=50
CHIP_WARMUP_DAY3_MAX=60
CHIP_WARMUP_MATURE_MIN=70
CHIP_WARMUP_MATURE_MAX=100
WORKING_HOURS_START=8
WORKING_HOURS_END=20:30
WORKING_HOURS_TIMEZONE=America/Sao_Paulo
EVOLUTION_API_URL=https://evo.imperio.example
EVOLUTION_API_KEY="k3y-\\"quoted\\"-value"
DB_PASSWORD=hunter2
NEW_FEATURE_FLAG=on
"""


def test_full_conversion() -> None:
    values, warnings = parse_dotenv(IMPERIO)
    assert warnings == []
    c = convert(values, source=".env.imperio")
    assert (c.tenant_id, c.name, c.services) == ("imperio", "Império Prêmios", ("recovery", "broadcast"))
    assert c.evolution_api_key == 'k3y-"quoted"-value'
    assert c.extra == {
        "antiban": {
            "strategy": "conti_chips",
            "delay_min": 30.0,
            "delay_max": 120.0,
            "pause_min": 600.0,
            "pause_max": 1200.0,
            "batch_size": 20,
            "warmup": {
                "day1": {"min": 10, "max": 20},
                "day2": {"min": 30, "max": 40},
                "day3": {"min": 50, "max": 60},
                "mature": {"min": 70, "max": 100},
            },
            "working_hours": {"start": "08:00", "end": "20:30", "timezone": "America/Sao_Paulo"},
        },
        "recovery": {"port": 4001},
        "broadcast": {"port": 4002},
    }
    assert any(w.startswith("unknown key NEW_FEATURE_FLAG") for w in c.warnings)
    db = [w for w in c.warnings if w.startswith("BROADCAST_DB_NAME")]
    assert (
        db
        and "data stays in the old database" in db[0]
        and "pg_dump" in db[0]
        and "imperio_broadcast" in db[0]
    )
    assert not any(w.startswith("RECOVERY_DB_NAME") for w in c.warnings)  # matches the derived name
    assert any(n.startswith("BROADCAST_ISOLATED ignored") for n in c.notes)
    assert any(n.startswith("DB_PASSWORD ignored") for n in c.notes)

    request = c.new_tenant(release="2.1.0")
    assert tomllib.loads(request.extra_toml) == c.extra
    assert request.evolution_api_key == 'k3y-"quoted"-value' and request.release == "2.1.0"

    text = c.to_toml()
    everything = text + repr(c) + "".join(c.warnings + c.notes)
    assert "k3y" not in everything and "hunter2" not in everything  # secrets never shown
    doc = tomllib.loads(text)
    assert doc["evolution"] == {"url": "https://evo.imperio.example", "api_key_file": SECRET_PLACEHOLDER}
    assert doc["services"] == "all" and doc["recovery"] == {"port": 4001}


def test_dotenv_syntax() -> None:
    values, warnings = parse_dotenv(
        "export A=1\n"
        "B = 'single # not a comment'  # a comment\n"
        'C="line1\\nline2"\n'
        "D=unquoted value # trailing comment\n"
        "E=with#hash\n"
        'F="multi\nline"\n'
        "G=${A}-${NOPE}\n"
        "H='${A}'\n"
        "A=2\n"
        "EMPTY=\n"
    )
    assert values == {
        "A": "2",
        "B": "single # not a comment",
        "C": "line1\nline2",
        "D": "unquoted value",
        "E": "with#hash",
        "F": "multi\nline",
        "G": "1-${NOPE}",
        "H": "${A}",
        "EMPTY": "",
    }
    assert any("NOPE" in w for w in warnings) and any("A is set again" in w for w in warnings)


def test_syntax_errors_name_lines_not_values() -> None:
    with pytest.raises(EnvFileError) as info:
        parse_dotenv('GOOD=1\nnot a pair\nEVOLUTION_API_KEY="secretvalue\n')
    problems = info.value.problems
    assert problems[0] == "line 2: expected KEY=VALUE"
    assert problems[1].startswith('line 3: EVOLUTION_API_KEY: the " quote is never closed')
    assert "secretvalue" not in str(info.value)


def test_bad_values_are_all_reported_and_secrets_not_echoed() -> None:
    values, _ = parse_dotenv(
        "SERVICE_TYPE=sms\nRECOVERY_PORT=99999\nANTIBAN_DELAY_MIN=soon\n"
        "WORKING_HOURS_START=25\nEVOLUTION_API_URL=evo.example.com\n"
    )
    with pytest.raises(EnvFileError) as info:
        convert(values)
    text = "\n".join(info.value.problems)
    for key in (
        "CLIENT_ID: missing",
        "SERVICE_TYPE: must be all, recovery or broadcast, got 'sms'",
        "RECOVERY_PORT: must be a whole number between 1 and 65535",
        "ANTIBAN_DELAY_MIN",
        "WORKING_HOURS_START",
        "EVOLUTION_API_URL",
    ):
        assert key in text


def test_single_service_and_id_override() -> None:
    values, _ = parse_dotenv(
        "CLIENT_ID=old\nSERVICE_TYPE=broadcast\nRECOVERY_PORT=4003\nBROADCAST_PORT=4004\n"
        "BROADCAST_DB_NAME=new_broadcast\nEVOLUTION_INSTANCES=a, b\n"
    )
    c = convert(values, tenant_id="new")
    assert c.tenant_id == "new" and c.services == ("broadcast",)
    assert c.extra == {"broadcast": {"port": 4004}}
    assert any("RECOVERY_PORT ignored" in n for n in c.notes)
    assert not c.warnings  # new_broadcast is the derived name for "new"
    assert (c.instances, c.broadcast_instances) == ((), ("a", "b"))  # a broadcast-only client's numbers
    doc = tomllib.loads(c.to_toml())
    assert doc["services"] == ["broadcast"] and doc["broadcast"] == {"port": 4004, "instances": ["a", "b"]}
    assert "instances" not in doc.get("evolution", {})
    assert "api_key_file" not in c.to_toml()  # no key in the file, none announced
