"""JSON-RPC 2.0 over the Unix socket: protocol, dispatch (registry, call context), server, docgen."""

from .protocol import Param

__all__ = ["Param"]
