"""How a run travels: the transport interface, and HTTP polling (the base layer's way).

A transport only moves a :class:`~remote_kernel.runloop.RunState`'s requests and results; the
state decides what to send and what is new. Two implement it: :class:`PollingTransport` here
(``query`` → ``continue``/``input`` over HTTP; works with any Backend.AI manager) and
:class:`~remote_kernel.proxy.channel.ChannelTransport` (the push channel). Because the state is
the transport's only memory, a run can move from the channel to polling halfway through.
"""

from __future__ import annotations

from typing import Protocol

from ..client import RunLoopClient
from ..runloop import RunState, Update


class RunTransport(Protocol):
    """Moves one run at a time between the kernel and the server."""

    name: str

    async def next(self, state: RunState) -> Update:
        """The run's next update (starting the run when the server does not know it yet)."""
        ...

    async def answer(self, state: RunState, text: str) -> None:
        """Deliver the user's answer to the run's current prompt."""
        ...

    async def interrupt(self, state: RunState, interrupt_id: str) -> None:
        """Interrupt the run (``interrupt_id`` makes a repeat harmless)."""
        ...


class PollingTransport:
    """The run loop over HTTP: each :meth:`next` is one execute request (held by the server
    until there is output, a prompt or the end)."""

    name = "polling"

    def __init__(self, client: RunLoopClient, session_id: str) -> None:
        self.client = client
        self.session_id = session_id

    async def next(self, state: RunState) -> Update:
        call = state.next_call()
        result = await self.client.execute(
            self.session_id, call.mode, call.code, state.run_id, options=call.options,
            cursor=call.cursor, idempotent=call.idempotent,
        )  # fmt: skip
        return state.accept(result, call.cursor)

    async def answer(self, state: RunState, text: str) -> None:
        state.answer(text)  # sent by the next call, as ``input``

    async def interrupt(self, state: RunState, interrupt_id: str) -> None:
        await self.client.interrupt(
            self.session_id, run_id=state.run_id, interrupt_id=interrupt_id, timeout=3
        )
