"""Recipients in: CSV as spreadsheets write it, and JSON, through the real broadcast child's API
(the admin socket oraclectl reaches through the daemon, and the public port with the bearer token)."""

from __future__ import annotations

import httpx
import psycopg

from tests.broadcast.support import TOKEN, rows

CSV = (
    "\ufeffNÚMERO;Nome;Cidade;Data de Nascimento\n"          # BOM, accents, another case, `;`
    '"(11) 98765-4321";"Silva; Ana";São Paulo;01/02/1990\n'  # quoted field holding the separator
    "123;Bob;Recife;\n"                                       # impossible number
    "+55 11 98765-4321;Ana again;Rio;\n"                      # the same number written otherwise
    ";No phone;Rio;\n"                                        # no number at all
    "\n"                                                      # blank line: ignored
    '21 8888-7777;"João\nda Silva";Niterói;\n'               # 8-digit mobile, line break in quotes
    "5531999990000;Zé;BH;\n"
)


async def create(admin: httpx.AsyncClient, templates=("{Oi|Olá} {{first_name}} de {{cidade}}",)) -> int:
    response = await admin.post("/campaigns", json={"name": "Black Friday", "templates": list(templates)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def test_csv_edge_cases_are_accepted_or_answered_by_line_and_reason(start_broadcast, broadcast_db):
    child = await start_broadcast(broadcast_db)
    async with child.admin() as admin:
        cid = await create(admin)
        answer = (await admin.post(f"/campaigns/{cid}/recipients", json={"csv": CSV})).json()
        outcome = (answer["accepted"], answer["invalid"], answer["duplicate"], answer["suppressed"])
        assert outcome == (3, 2, 1, 0)
        assert [(i["line"], i["value"]) for i in answer["invalid_lines"]] == [(3, "123"), (5, "")]
        assert "not a valid phone number" in answer["invalid_lines"][0]["reason"]
        assert answer["invalid_lines"][1]["reason"] == "no phone number"
        assert answer["duplicate_lines"] == [{"line": 4, "phone": "5511987654321", "first_line": 2}]
        assert answer["columns"] == ["cidade", "data_de_nascimento"]
        # Importing the same file again adds nobody: every valid number is already a recipient.
        again = (await admin.post(f"/campaigns/{cid}/recipients", json={"csv": CSV})).json()
        assert (again["accepted"], again["duplicate"]) == (0, 4)
    got = rows(broadcast_db, "SELECT line, phone, name, vars->>'cidade' FROM recipients ORDER BY line")
    assert got == [(2, "5511987654321", "Silva; Ana", "São Paulo"),
                   (7, "5521988887777", "João\nda Silva", "Niterói"),
                   (9, "5531999990000", "Zé", "BH")]  # João's record spans lines 7-8


async def test_comma_separated_header_aliases_json_and_bad_input_name_the_field(start_broadcast,
                                                                              broadcast_db):
    child = await start_broadcast(broadcast_db)
    async with child.admin() as admin:
        cid = await create(admin, ["Oi {{name}}"])
        csv = 'name,WhatsApp,plano\r\n"Souza, Maria",11 91234-5678,ouro\r\n'
        answer = (await admin.post(f"/campaigns/{cid}/recipients", json={"csv": csv})).json()
        assert answer["accepted"] == 1 and answer["columns"] == ["plano"]
        items = [{"Telefone": 21987654321, "nome": "Carla"}, {"celular": "x"}, {"phone": "11 91234-5678"}]
        answer = (await admin.post(f"/campaigns/{cid}/recipients", json={"recipients": items})).json()
        assert (answer["accepted"], answer["invalid"], answer["duplicate"]) == (1, 1, 1)
        assert answer["invalid_lines"][0]["item"] == 2
        no_phone = await admin.post(f"/campaigns/{cid}/recipients", json={"csv": "nome;cidade\nAna;Rio\n"})
        assert no_phone.status_code == 422
        assert no_phone.json()["field"] == "csv" and "telefone" in no_phone.json()["detail"]
        bad = await admin.post("/campaigns", json={"name": "x", "templates": ["{Oi {{first_name}}"]})
        assert bad.status_code == 422 and bad.json()["field"] == "templates"
        assert "never closed" in bad.json()["detail"]
        missing = await admin.get("/campaigns/999")
        assert missing.status_code == 404
    assert rows(broadcast_db, "SELECT phone, name, vars FROM recipients ORDER BY id") == [
        ("5511912345678", "Souza, Maria", {"plano": "ouro"}), ("5521987654321", "Carla", {})]


async def test_the_public_port_needs_the_tenants_bearer_token(start_broadcast, broadcast_db):
    child = await start_broadcast(broadcast_db)
    async with httpx.AsyncClient(base_url=child.url) as public:
        assert (await public.get("/campaigns")).status_code == 401
        assert (await public.get("/campaigns", headers={"authorization": "Bearer nope"})).status_code == 401
        ok = await public.post("/campaigns", json={"name": "API", "templates": "Oi"},
                               headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 201
    with psycopg.connect(broadcast_db) as conn:
        assert conn.execute("SELECT name FROM campaigns").fetchall() == [("API",)]
