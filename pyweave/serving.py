"""socketserver's serving loop without its periodic wake-up.

`socketserver.BaseServer.serve_forever` wakes every `poll_interval` (0.5 s by default) only to see
whether `shutdown()` was called: an idle agent's join endpoint and DNS servers paid for that several
times a second (issue 11: an idle agent costs at most 1 % of a core). Mixed in before a socketserver
class, `Quiet` sleeps in one `select` until a request comes or `shutdown()` writes to its pipe.
"""

from __future__ import annotations

import os
import selectors
import threading
from typing import Any


class Quiet:
    """Mix in before a socketserver server class: `serve_forever` wakes only for a request or for
    `shutdown` (which, as socketserver's, returns once the loop has ended)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wake_r, self._wake_w = os.pipe()
        self._serving = threading.Event()
        self._stopped = threading.Event()
        super().__init__(*args, **kwargs)

    def serve_forever(self, poll_interval: float | None = None) -> None:  # noqa: ARG002 - socketserver's signature
        self._serving.set()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)  # type: ignore[arg-type] # a server has fileno()
                selector.register(self._wake_r, selectors.EVENT_READ)
                while True:
                    ready = {key.fileobj for key, _ in selector.select()}
                    if self._wake_r in ready:
                        return
                    self._handle_request_noblock()  # type: ignore[attr-defined]
                    self.service_actions()  # type: ignore[attr-defined]
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        if not self._serving.is_set():
            return  # never served: nothing to stop
        os.write(self._wake_w, b"x")
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()  # type: ignore[misc]
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
