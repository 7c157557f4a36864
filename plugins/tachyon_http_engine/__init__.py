"""The remote matching engine (``engine = "http"``): orders go over HTTP+JSON to a matching service.

``tachyon-engine-server`` (``server.py``) is the reference service; docs/engine-api.yaml the protocol.
"""

from tachyond import hookimpl

from .client import HttpEngine

__all__ = ["HttpEngine", "register_engines"]


@hookimpl
def register_engines(register):
    """Register the ``http`` engine factory."""
    register("http", HttpEngine)
