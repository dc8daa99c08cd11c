"""The Conti Chips anti-ban engine shared by recovery and broadcast (docs/antiban.md)."""

from oraclewad.services.antiban.engine import Engine, Lease, Skip, Status, Wait, text_hash
from oraclewad.services.antiban.forecast import Forecast
from oraclewad.services.antiban.rules import Rules

__all__ = ["Engine", "Forecast", "Lease", "Rules", "Skip", "Status", "Wait", "text_hash"]
