"""Recovery fixtures (the shared ones are tests/services/sending.py's): a migrated scratch database
(`recovery_db`) and the real recovery child on a daemon-style socket (`start_recovery(dsn, **overrides)`)."""

from tests.recovery.support import recovery_config
from tests.services.sending import database_fixture, starter_fixture

recovery_db = database_fixture("recovery")
start_recovery = starter_fixture("recovery", recovery_config)
