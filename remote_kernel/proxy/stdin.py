"""Asking the frontend for a line: an awaitable, cancellable ``input_request`` on stdin.

ipykernel's own ``raw_input`` blocks the thread until the answer comes (jupyter-kernel-notes
§2), which would stall the proxy's event loop: the run's output, interrupts and the push channel
all live there. This sends the request on the kernel's stdin socket and polls for the reply
without blocking, so the wait can be cancelled when the cell is interrupted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq
from IPython.core.error import StdinNotImplementedError

from .replies import STDIN_REFUSED

#: How often the stdin socket is checked for the frontend's reply.
POLL_INTERVAL = 0.02


async def ask(kernel: Any, prompt: str, password: bool = False) -> str:
    """Send ``input_request`` to the frontend of the current shell request; return its line.

    Raises :class:`StdinNotImplementedError` when the frontend does not allow stdin, and
    :class:`EOFError` when it answers with Ctrl-D (``"\\x04"``).
    """
    if not kernel._allow_stdin:
        raise StdinNotImplementedError(STDIN_REFUSED)
    session, socket = kernel.session, kernel.stdin_socket
    assert session is not None
    parent = kernel.get_parent("shell")
    ident = kernel._get_shell_context_var(kernel._shell_parent_ident)
    while True:  # drop stale replies (e.g. from a stdin box left after an interrupt)
        try:
            socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
    session.send(socket, "input_request", {"prompt": prompt, "password": password}, parent,
                 ident=ident)  # fmt: skip
    while True:
        if socket.poll(0):
            _, reply = session.recv(socket)
            if reply is not None:
                value = str(reply["content"].get("value", ""))
                if value == "\x04":
                    raise EOFError
                return value
        await asyncio.sleep(POLL_INTERVAL)
