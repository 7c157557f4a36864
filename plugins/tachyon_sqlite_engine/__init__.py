"""The built-in durable matching engine: the shared matching core plus an encrypted SQLite event log."""

from tachyond import hookimpl

from .engine import SqliteEngine

__all__ = ["SqliteEngine", "register_engines"]


@hookimpl
def register_engines(register):
    """Register the ``sqlite`` engine factory."""
    register("sqlite", SqliteEngine)
