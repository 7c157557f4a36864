"""A real webhook endpoint for the Stripe tests: hypercorn on a loopback port recording every POST."""

from __future__ import annotations

import json

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve


class Receiver:
    """Records every POST; answers with the queued statuses, then 200."""

    def __init__(self):
        self.requests: list[tuple[bytes, dict[str, str]]] = []
        self.statuses: list[int] = []
        self._changed = trio.Event()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.requests.append((body, {k.decode().lower(): v.decode() for k, v in scope["headers"]}))
        self._changed.set()
        self._changed = trio.Event()
        status = self.statuses.pop(0) if self.statuses else 200
        headers = [(b"location", b"http://127.0.0.1:9/elsewhere")] if 300 <= status < 400 else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    async def wait_for(self, count: int) -> None:
        while len(self.requests) < count:
            await self._changed.wait()

    def events(self) -> list[dict]:
        return [json.loads(body) for body, _ in self.requests]


async def start_receiver(nursery) -> tuple[Receiver, str]:
    receiver = Receiver()
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    binds = await nursery.start(serve, receiver, config)
    return receiver, binds[0] + "/webhook/stripe"
