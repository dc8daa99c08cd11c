"""Broadcast fixtures (the shared ones, `shared_dsn` for the suppression list among them, are
tests/services/sending.py's): a migrated scratch database (`broadcast_db`) and the real broadcast
child serving its campaign API on a real port and its admin socket (`start_broadcast`)."""

from tests.broadcast.support import broadcast_config
from tests.services.sending import database_fixture, starter_fixture

broadcast_db = database_fixture("broadcast")
start_broadcast = starter_fixture("broadcast", broadcast_config)
