"""Answers written but not yet read by their clients: the bytes in the connections' write buffers.

uvicorn writes a whole response body into the transport at once and the handler returns: a client
that stops reading keeps its answer in our memory for as long as it keeps the connection. The
protocol (app/http/server.py) accounts those bytes here while a connection's buffer is over the
transport's high-water mark, and closes the connection when its client has read nothing for
`send_timeout_s`; the metrics show them and the memory admission counts them (MemoryBudget.outside).
"""

from __future__ import annotations

from collections.abc import Callable


class UnsentAnswers:
    def __init__(self) -> None:
        self.bytes = 0
        self.connections = 0
        # Called when bytes leave (read by clients, or dropped with their connection): the memory
        # admission may admit a waiting job.
        self.on_release: Callable[[], None] | None = None

    def change(self, delta_bytes: int, delta_connections: int = 0) -> None:
        self.bytes += delta_bytes
        self.connections += delta_connections
        if delta_bytes < 0 and self.on_release is not None:
            self.on_release()


# One per process, as the protocol instances uvicorn makes per connection share it.
UNSENT = UnsentAnswers()
