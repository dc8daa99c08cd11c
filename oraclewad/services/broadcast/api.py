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
import trio
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


def _authorized(request: Request, tokens: list[str]) -> bool:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and any(
        hmac.compare_digest(value.strip().encode(), t.encode()) for t in tokens if t)


def _refusal(exc: Exception) -> JSONResponse | None:
    """The answer for an exception a handler may raise (None: not ours, let it propagate)."""
    if isinstance(exc, Invalid):
        return _error(exc.status, exc.field, exc.message)
    if isinstance(exc, store.NotFound):
        return JSONResponse({"error": "not found", "detail": str(exc)}, status_code=404)
    if isinstance(exc, store.Conflict):
        return JSONResponse({"error": "conflict", "detail": str(exc)}, status_code=409)
    if isinstance(exc, recipients.ImportError_):
        return _error(422, "csv", str(exc))
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        return JSONResponse({"error": "unavailable", "detail": "the database is unavailable; retry"},
                            status_code=503, headers={"Retry-After": "5"})
    return None


def _guard(handler: Callable[[Request], Awaitable[Any]], token: Callable[[], list[str]] | None) -> Handler:
    async def endpoint(request: Request) -> Response:
        if token is not None and not _authorized(request, token()):
            return JSONResponse({"error": "unauthorized", "detail": "Authorization: Bearer <the tenant's "
                                 "static token> is required (`oraclectl tenant secrets ID`)"},
                                status_code=401)
        try:
            answer = await handler(request)
        except Exception as exc:
            refusal = _refusal(exc)
            if refusal is None:
                raise
            return refusal
        return answer if isinstance(answer, Response) else JSONResponse(answer)
    return endpoint


def _name(value: Any, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > NAME_MAX:
        raise Invalid("name", f"a campaign needs a name (1 to {NAME_MAX} characters)")
    return value.strip()


class CampaignAPI:
    """The handlers; each returns a JSON-able answer or raises what _refusal answers."""

    def __init__(self, service: BroadcastService) -> None:
        self.service = service

    async def list_(self, request: Request) -> Any:
        return {"campaigns": await self.service.listing()}

    async def create(self, request: Request) -> Any:
        body = await _json(request)
        name = _name(body.get("name"), required=True)
        if "templates" not in body:
            raise Invalid("templates", 'give one template or a list, e.g. ["{Oi|Olá} {{first_name}}!"]')
        templates = check_templates(body["templates"])
        cid = await self.service.db(store.create, name, templates, self.service.clock())
        self.service.log.info("campaign created", extra={"campaign": cid})
        return JSONResponse(await self.service.show(cid), status_code=201)

    async def show(self, request: Request) -> Any:
        return await self.service.show(_campaign_id(request))

    async def edit(self, request: Request) -> Any:
        cid = _campaign_id(request)
        body = await _json(request)
        name = _name(body.get("name"), required=False)
        templates = check_templates(body["templates"]) if "templates" in body else None
        if name is None and templates is None:
            raise Invalid("body", "give name or templates to change", 400)
        await self.service.db(store.edit, cid, name, templates, self.service.clock())
        self.service.log.info("campaign edited", extra={"campaign": cid, "templates": templates is not None})
        return await self.service.show(cid)

    async def add_recipients(self, request: Request) -> Any:
        cid = _campaign_id(request)
        body = await _json(request)
        if isinstance(body.get("csv"), str):
            first = body.get("first_line", 1)
            if not isinstance(first, int) or isinstance(first, bool) or first < 1:
                raise Invalid("first_line", "must be a line number (1 or more)")
            # CPU-bound (100,000 rows: about a second): off the event loop, which must keep
            # answering and pinging the watchdog meanwhile.
            parsed = await trio.to_thread.run_sync(recipients.parse_csv, body["csv"], first)
            where = "line"
        elif "recipients" in body:
            parsed = await trio.to_thread.run_sync(recipients.parse_json, body["recipients"])
            where = "item"
        else:
            raise Invalid("body", 'give {"csv": "<the file>"} or {"recipients": [{"telefone": ...}]}', 400)
        return await self.service.import_parsed(cid, parsed, where)

    async def test(self, request: Request) -> Any:
        cid = _campaign_id(request)
        body = await _json(request)
        phone = normalise(str(body.get("phone") or ""))
        if phone is None:
            raise Invalid("phone", "a valid test number is needed, e.g. 11987654321")
        values = body.get("vars") or {}
        if not isinstance(values, dict):
            raise Invalid("vars", "must be an object of column values")
        name = body.get("name")
        return await self.service.send_test(cid, phone, name if isinstance(name, str) else None,
                                            {str(k): str(v) for k, v in values.items()})

    def action(self, name: str) -> Callable[[Request], Awaitable[Any]]:
        async def act(request: Request) -> Any:
            cid = _campaign_id(request)
            body = await _json(request)
            at = parse_at(body.get("at")) if name == "start" else None
            return await self.service.act(cid, name, at)
        return act


def routes(service: BroadcastService, *, token: Callable[[], list[str]] | None = None) -> list[Route]:
    """The API's routes; with `token`, each request needs `Authorization: Bearer <one of them>`."""
    api = CampaignAPI(service)
    table: list[tuple[str, str, Callable[[Request], Awaitable[Any]]]] = [
        ("/campaigns", "GET", api.list_), ("/campaigns", "POST", api.create),
        ("/campaigns/{cid}", "GET", api.show), ("/campaigns/{cid}", "PATCH", api.edit),
        ("/campaigns/{cid}/recipients", "POST", api.add_recipients),
        ("/campaigns/{cid}/test", "POST", api.test)]
    table += [(f"/campaigns/{{cid}}/{name}", "POST", api.action(name))
              for name in ("start", "pause", "resume", "cancel")]
    return [Route(path, _guard(handler, token), methods=[method]) for path, method, handler in table]
