"""An order waiting for its market's next batch, and how batches are cut."""

from __future__ import annotations

import trio

MAX_BATCH = 256


class Request:
    """One dex.place_order waiting for its batch: the order, then its answer or error."""

    __slots__ = ("order", "done", "result", "error")

    def __init__(self, order: dict):
        self.order = order
        self.done = trio.Event()
        self.result: dict | None = None
        self.error: Exception | None = None

    @property
    def book_dependent(self) -> bool:
        return self.order["type"] == "market" or self.order["post_only"]

    def finish(self, result: dict | None = None, error: Exception | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


def take_batch(queue: list[Request]) -> list[Request]:
    """The next batch: orders whose checks need the book it meets (market, post-only) only ever come first."""
    batch = [queue.pop(0)]
    while queue and len(batch) < MAX_BATCH and not queue[0].book_dependent:
        batch.append(queue.pop(0))
    return batch
