"""The campaign API: JSON over HTTP, served on the admin socket (oraclectl, through the daemon's
ServiceCall) and on the public port with the tenant's bearer token (a tenant's own tools).

GET    /campaigns                       every campaign with its counts
POST   /campaigns                       {"name", "templates"} -> 201 {"id", ...}
GET    /campaigns/{id}                  counts, progress, ETA (recomputed from the pacing state)
PATCH  /campaigns/{id}                  {"name"?, "templates"?}  (templates: draft/scheduled/paused)
POST   /campaigns/{id}/recipients       {"csv": text, "first_line"?} or {"recipients": [{...}]}
POST   /campaigns/{id}/test             {"phone", "name"?, "vars"?}: the rendered text to a test number
POST   /campaigns/{id}/start            {"at"?: epoch seconds or ISO 8601}; /pause /resume /cancel

Errors: 400/422 `{"error", "field", "detail"}` naming the field and the fix; 404 unknown campaign;
409 not allowed in the campaign's state; 503 the database is away (Retry-After).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oraclewad.services.broadcast import recipients, store
from oraclewad.services.phones import normalise
from oraclewad.templating import TemplateError, parse_set

if TYPE_CHECKING:
    from oraclewad.services.broadcast.app import BroadcastService

BODY_LIMIT = 32 * 1024 * 1024   # a 100 000-row CSV is about 4 MB
NAME_MAX = 200
LISTED_MAX = 200                # invalid/duplicate/suppressed lines listed in one answer (all counted)


class Invalid(Exception):
    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": "invalid" if status == 422 else "bad request", "field": field,
                         "detail": f"{field}: {message}"}, status_code=status)


def check_templates(value: Any) -> Any:
    try:
        parse_set(value, "templates", None)
    except TemplateError as exc:
        raise Invalid("templates", str(exc).removeprefix("templates").lstrip(": ") or str(exc)) from None
    return value


def parse_at(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                raise Invalid("at", "needs a time zone, e.g. 2026-12-02T09:00:00-03:00")
            return moment.timestamp()
    raise Invalid("at", "must be epoch seconds or an ISO 8601 time such as 2026-12-02T09:00:00-03:00")


async def _json(request: Request) -> dict[str, Any]:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > BODY_LIMIT:
        raise Invalid("body", f"larger than {BODY_LIMIT} bytes: import the file in parts", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_LIMIT:
            raise Invalid("body", f"larger than {BODY_LIMIT} bytes: import the file in parts", 413)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise Invalid("body", "is not JSON", 400) from None
    if not isinstance(body, dict):
        raise Invalid("body", "must be a JSON object", 400)
    return body


def _campaign_id(request: Request) -> int:
    raw = request.path_params["cid"]
    if not raw.isdigit() or len(raw) > 18:
        raise Invalid("id", "a campaign id is a number (`oraclectl campaign list ID` shows them)", 400)
    return int(raw)


Handler = Callable[[Request], Awaitable[Response]]


def routes(service: BroadcastService, *, token: Callable[[], list[str]] | None = None) -> list[Route]:
    """The API's routes; with `token`, each request needs `Authorization: Bearer <one of them>`."""

    def guard(handler: Callable[[Request], Awaitable[Any]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            if token is not None:
                given = request.headers.get("authorization", "")
                scheme, _, value = given.partition(" ")
                if scheme.lower() != "bearer" or not any(
                        hmac.compare_digest(value.strip().encode(), t.encode())
                        for t in token() if t):
                    return JSONResponse({"error": "unauthorized", "detail": "Authorization: Bearer <the "
                                         "tenant's static token> is required "
                                         "(`oraclectl tenant secrets ID`)"},
                                        status_code=401)
            try:
                answer = await handler(request)
            except Invalid as exc:
                return _error(exc.status, exc.field, exc.message)
            except store.NotFound as exc:
                return JSONResponse({"error": "not found", "detail": str(exc)}, status_code=404)
            except store.Conflict as exc:
                return JSONResponse({"error": "conflict", "detail": str(exc)}, status_code=409)
            except recipients.ImportError_ as exc:
                return _error(422, "csv", str(exc))
            except (psycopg.OperationalError, PoolTimeout):
                return JSONResponse({"error": "unavailable", "detail": "the database is unavailable; retry"},
                                    status_code=503, headers={"Retry-After": "5"})
            if isinstance(answer, Response):
                return answer
            return JSONResponse(answer)
        return endpoint

    async def list_(request: Request) -> Any:
        return {"campaigns": await service.listing()}

    async def create(request: Request) -> Any:
        body = await _json(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX:
            raise Invalid("name", f"a campaign needs a name (1 to {NAME_MAX} characters)")
        if "templates" not in body:
            raise Invalid("templates", 'give one template or a list, e.g. ["{Oi|Olá} {{first_name}}!"]')
        templates = check_templates(body["templates"])
        cid = await service.db(store.create, name.strip(), templates, service.clock())
        service.log.info("campaign created", extra={"campaign": cid})
        return JSONResponse(await service.show(cid), status_code=201)

    async def show(request: Request) -> Any:
        return await service.show(_campaign_id(request))

    async def edit(request: Request) -> Any:
        cid = _campaign_id(request)
        body = await _json(request)
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX):
            raise Invalid("name", f"1 to {NAME_MAX} characters")
        templates = check_templates(body["templates"]) if "templates" in body else None
        if name is None and templates is None:
            raise Invalid("body", "give name or templates to change", 400)
        await service.db(store.edit, cid, name.strip() if name else None, templates, service.clock())
        service.log.info("campaign edited", extra={"campaign": cid, "templates": templates is not None})
        return await service.show(cid)

    async def add_recipients(request: Request) -> Any:
        cid = _campaign_id(request)
        body = await _json(request)
        if isinstance(body.get("csv"), str):
            first = body.get("first_line", 1)
            if not isinstance(first, int) or isinstance(first, bool) or first < 1:
                raise Invalid("first_line", "must be a line number (1 or more)")
            parsed, where = recipients.parse_csv(body["csv"], first), "line"
        elif "recipients" in body:
            parsed, where = recipients.parse_json(body["recipients"]), "item"
        else:
            raise Invalid("body", 'give {"csv": "<the file>"} or {"recipients": [{"telefone": ...}]}', 400)
        return await service.import_parsed(cid, parsed, where)

    async def test(request: Request) -> Any:
        cid = _campaign_id(request)
        body = await _json(request)
        phone = normalise(str(body.get("phone") or ""))
        if phone is None:
            raise Invalid("phone", "a valid test number is needed, e.g. 11987654321")
        values = body.get("vars") or {}
        if not isinstance(values, dict):
            raise Invalid("vars", "must be an object of column values")
        name = body.get("name")
        return await service.send_test(cid, phone, name if isinstance(name, str) else None,
                                       {str(k): str(v) for k, v in values.items()})

    def action(name: str) -> Callable[[Request], Awaitable[Any]]:
        async def act(request: Request) -> Any:
            cid = _campaign_id(request)
            body = await _json(request)
            at = parse_at(body.get("at")) if name == "start" else None
            return await service.act(cid, name, at)
        return act

    out = [Route("/campaigns", guard(list_), methods=["GET"]),
           Route("/campaigns", guard(create), methods=["POST"]),
           Route("/campaigns/{cid}", guard(show), methods=["GET"]),
           Route("/campaigns/{cid}", guard(edit), methods=["PATCH"]),
           Route("/campaigns/{cid}/recipients", guard(add_recipients), methods=["POST"]),
           Route("/campaigns/{cid}/test", guard(test), methods=["POST"])]
    out += [Route(f"/campaigns/{{cid}}/{name}", guard(action(name)), methods=["POST"])
            for name in ("start", "pause", "resume", "cancel")]
    return out
