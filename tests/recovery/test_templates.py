"""Templates and the recovery plan: what a tenant file may say, and what a customer reads."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from oraclewad import antiban_plan, recovery_plan
from oraclewad.errors import Problem
from oraclewad.services.phones import jid_phone, normalise
from oraclewad.settings import Policy
from oraclewad.templating import TemplateError, brl, parse, parse_set, pt_br_datetime
from oraclewad.tenants.model import parse_tenant

VARS = {"name": "Maria Silva", "first_name": "Maria", "product": "Moto", "total": "R$ 10,00",
        "pix_code": "PIX", "expires_at": "", "order_id": "1", "quantity": "1"}


def test_spintax_and_weights_render_every_choice_and_stay_stable_per_seed():
    ts = parse_set(["{Olá|Oi} {{first_name}}", {"text": "Ei {{name}}", "weight": 3}], "t")
    seen = {ts.render(VARS, seed=f"order-{i}") for i in range(400)}
    assert seen == {"Olá Maria", "Oi Maria", "Ei Maria Silva"}
    # Weight 3 against 1 + 1: the third variation is drawn about 3/4 of the time.
    draws = [ts.render(VARS, seed=f"o{i}") for i in range(2000)]
    assert 0.68 < draws.count("Ei Maria Silva") / 2000 < 0.82
    assert ts.render(VARS, seed="order-7") == ts.render(VARS, seed="order-7")  # a retry says the same


def test_nested_and_escaped_spintax():
    ts = parse_set("{a {b|c}|d}\\{x\\|y\\}", "t")
    assert {ts.render(VARS, seed=str(i)) for i in range(200)} == {"a b{x|y}", "a c{x|y}", "d{x|y}"}


@pytest.mark.parametrize(("text", "why"), [
    ("Oi {{nome}}", "unknown variable {{nome}}"),
    ("{Olá|Oi", "never closed"),
    ("Olá}", "unexpected '}'"),
    ("{Olá} Maria", "has one option"),
    ("Oi {{first_name}", "never closed"),
])
def test_bad_templates_are_refused_with_where_and_how(text, why):
    with pytest.raises(TemplateError, match=why.replace("{", r"\{").replace("}", r"\}")):
        parse(text)


def test_brl_and_pt_br_dates():
    assert brl(Decimal("1234.56")) == "R$ 1.234,56"
    assert brl(Decimal("0.5")) == "R$ 0,50"
    assert brl(Decimal("1234567.891")) == "R$ 1.234.567,89"
    moment = datetime(2026, 12, 1, 17, 30, tzinfo=UTC)
    assert pt_br_datetime(moment, "America/Sao_Paulo") == "01/12/2026 às 14:30"
    assert pt_br_datetime(moment, "America/Manaus") == "01/12/2026 às 13:30"


def test_plan_defaults_and_checks():
    plan, problems = recovery_plan.parse({})
    assert problems == []
    assert [(s["after"], s["max_age"]) for s in plan["steps"]] == [(60.0, 4 * 3600.0)]
    plan, problems = recovery_plan.parse({
        "time_zone": "Mars/Olympus", "opt_out_scope": "everyone", "send_window": ["8h", "21:00"],
        "steps": [{"after": 60}, {"after": 30, "templates": ["{{bogus}}"]}],
    })
    keys = {k for k, _ in problems}
    assert keys == {"recovery.time_zone", "recovery.opt_out_scope", "recovery.send_window",
                    "recovery.steps[1].after", "recovery.steps[1].templates[0]"}


def test_a_bad_template_is_a_check_error_of_the_tenant_file(tmp_path: Path):
    problems: list[Problem] = []
    doc = {"id": "loja", "recovery": {"steps": [{"after": 60, "templates": ["Oi {{nome}}"]}],
                                      "thank_you": {"templates": ["{Valeu|Obrigado"]}}}
    assert parse_tenant(doc, tmp_path / "loja.toml", Policy(), problems) is None
    text = "\n".join(str(p) for p in problems)
    assert "recovery.steps[0].templates[0]" in text and "unknown variable {{nome}}" in text
    assert "recovery.thank_you.templates[0]" in text and "never closed" in text
    problems.clear()
    tenant = parse_tenant({"id": "loja", "recovery": {"opt_out_scope": "all", "port": 4500}},
                          tmp_path / "loja.toml", Policy(), problems)
    assert problems == [] and tenant is not None and tenant.recovery["opt_out_scope"] == "all"


def test_phone_numbers():
    assert normalise("(11) 98765-4321") == "5511987654321"
    assert normalise("11 8765-4321") == "5511987654321"          # the 9th digit added back
    assert normalise("551187654321@s.whatsapp.net") == "5511987654321"
    assert normalise("+55 11 3333-4444") == "551133334444"        # a landline keeps 8 digits
    assert normalise("123") is None and normalise("+55 00 0000-0000") is None
    assert jid_phone("80000000000001@lid", "5511987654321@s.whatsapp.net") == "5511987654321"
    assert jid_phone("120363000000000000@g.us") is None


def test_an_unknown_time_zone_is_named_with_the_fix_in_both_plans():
    plan, problems = recovery_plan.parse({"time_zone": "Mars/Base"})
    assert plan["time_zone"] == "America/Sao_Paulo"
    assert ("recovery.time_zone", "unknown time zone 'Mars/Base': use an IANA name such as "
            '"America/Sao_Paulo"') in problems
    plan, problems = antiban_plan.parse({"working_hours": {"timezone": 5}})
    assert ("antiban.working_hours.timezone", "unknown time zone 5: use an IANA name such as "
            '"America/Sao_Paulo"') in problems
