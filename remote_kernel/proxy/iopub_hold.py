"""IOPub that keeps what the kernel publishes before anyone listens, and sends it to the first
subscriber.

A PUB socket drops what it sends while no subscriber is connected. A client's SUB socket
connects (and reconnects after a restart on the same ports) every 100-200 ms until it is in, so
a kernel that starts quickly can answer a client's first request, and publish the status and
output that go with it, before that client's IOPub is connected: the frontend never sees them
(jupyter_server's "nudge" asks again 0.5 s later; a cell sent at once loses its output). The
forked proxy kernel is up about 80 ms after its launch, inside that window.

ipykernel 7's IOPub socket is an XPUB, which learns of the first subscription (and answers it
with ``iopub_welcome``). :class:`HoldingIOPubThread` holds what is published until then, and
sends it in order after the welcome; what is still held :data:`HOLD_SECONDS` after the start
(nobody subscribed) or beyond :data:`HOLD_MESSAGES` is sent as it comes, as any kernel would.

Only the first subscriber is waited for: an XPUB reports a topic's first subscription only, and
waiting out ZMQ's reconnect interval (100-200 ms) for clients that may still be reconnecting
after a restart would cost every start that much. jupyter_server connects two SUB sockets to a
kernel (its activity monitor and the frontend's WebSocket); when the monitor subscribes first,
the frontend can still miss what was published before its own subscription, as with any kernel.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ipykernel import kernelapp
from ipykernel.iostream import IOPubThread

#: How long after the IOPub thread's start it holds messages for a first subscriber.
HOLD_SECONDS = 3.0
#: At most this many messages are held.
HOLD_MESSAGES = 1000


class HoldingIOPubThread(IOPubThread):
    """An :class:`IOPubThread` that sends what it published before the first subscription to
    that subscriber (the methods below run on the IOPub thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._held: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] | None = []
        self._hold_until = time.monotonic() + HOLD_SECONDS
        super().__init__(*args, **kwargs)

    def _really_send(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        held = self._held
        if held is not None:
            left = self._hold_until - time.monotonic()
            if len(held) < HOLD_MESSAGES and left > 0:
                if not held:  # nobody may come: stop holding then
                    self.io_loop.call_later(left, self._release)
                held.append((msg, args, kwargs))
                return
            self._release()
        super()._really_send(msg, *args, **kwargs)

    def _handle_subscription(self, frames: list[bytes]) -> None:
        super()._handle_subscription(frames)  # the iopub_welcome goes first
        if any(frame[:1] == b"\x01" for frame in frames):
            self._release()

    def _release(self) -> None:
        held, self._held = self._held, None
        for msg, args, kwargs in held or ():
            super()._really_send(msg, *args, **kwargs)


@contextmanager
def holding_iopub() -> Iterator[None]:
    """While it is open, ``IPKernelApp.init_iopub`` makes a :class:`HoldingIOPubThread`."""
    original = kernelapp.IOPubThread
    kernelapp.IOPubThread = HoldingIOPubThread  # type: ignore[misc]
    try:
        yield
    finally:
        kernelapp.IOPubThread = original  # type: ignore[misc]
