"""The control plane: oraclewa.v1.Control over gRPC (sync server threads bridged into trio)."""

from oraclewad.control.server import ControlLimits, serve_control

__all__ = ["ControlLimits", "serve_control"]
