"""dex.watch: a connection's subscription to settled trades."""

from __future__ import annotations

from typing import Any

WATCH_BUFFER = 1000

class Watcher:
    """One dex.watch subscription: its id, market filter (None: all), and the channel its stream reads."""

    def __init__(self, watch_id: str, market: str | None, send: Any, receive: Any, owner: object = None):
        self.id = watch_id
        self.owner = owner   # the connection that asked: only it may dex.unwatch
        self.market = market
        self.send = send
        self.receive = receive
        self.ended: str | None = None   # why the daemon ended it (None: the client asked, or it is live)
