"""Child processes, restart policy, per-service runners and the reconcile loop."""

from oraclewad.supervisor.runner import Candidate, SwapAborted
from oraclewad.supervisor.spec import ProcessSpec
from oraclewad.supervisor.status import Changes, ServiceEvent, ServiceStatus
from oraclewad.supervisor.supervisor import Supervisor

__all__ = ["Candidate", "Changes", "ProcessSpec", "ServiceEvent", "ServiceStatus", "Supervisor",
           "SwapAborted"]
