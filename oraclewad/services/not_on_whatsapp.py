"""Numbers Evolution answered `exists: false`, remembered for the whole tenant.

Each lookup of a number that is not on WhatsApp is a ban risk, so a number one of the tenant's
services learned is never tried again by either: the list lives in the tenant's shared database
(`<tenant>_shared`, table `not_on_whatsapp`, made by provisioning; both service roles may SELECT
and INSERT, nothing else, and no other tenant's role can connect). It is reached through the
suppression list's connection pool. The anti-ban engine asks it before each reservation and tells
it each exists:false; the engine's own `antiban_invalid_numbers` keeps the service's copy, so a
shared database that is briefly away costs a lookup at worst, never a send.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

log = logging.getLogger("oraclewad.services.not_on_whatsapp")


class NotOnWhatsApp:
    def __init__(self, pool: ConnectionPool | None, service: str, logger: Any = None) -> None:
        self.pool = pool
        self.service = service
        self.log = logger or log

    def contains_sync(self, phone: str) -> bool:
        if self.pool is None:
            return False
        try:
            with self.pool.connection() as conn:
                return conn.execute("SELECT 1 FROM not_on_whatsapp WHERE phone = %s",
                                    (phone,)).fetchone() is not None
        except (psycopg.Error, PoolTimeout) as exc:
            self.log.warning("the tenant's not-on-WhatsApp list is unavailable: this service's own copy "
                             "decides", extra={"error": type(exc).__name__})
            return False

    def add_sync(self, phone: str, instance: str, now: float) -> None:
        if self.pool is None:
            return
        try:
            with self.pool.connection() as conn:
                conn.execute("INSERT INTO not_on_whatsapp (phone, service, instance, noted_at)"
                             " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                             (phone, self.service, instance, datetime.fromtimestamp(now, tz=UTC)))
        except (psycopg.Error, PoolTimeout) as exc:
            self.log.warning("exists:false not shared with the tenant's other service (its list is "
                             "unavailable); this service remembers it", extra={"error": type(exc).__name__})
