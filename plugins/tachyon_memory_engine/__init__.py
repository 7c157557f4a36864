"""The built-in in-memory matching engine: fast, not durable (the core re-seeds it from the ledger at start)."""

from tachyond import hookimpl

from .engine import MemoryEngine

__all__ = ["MemoryEngine", "register_engines"]


@hookimpl
def register_engines(register):
    """Register the ``memory`` engine factory."""
    register("memory", MemoryEngine)
